"""A tiny registered-model stand-in for trainer tests: conv "encoder" + BN + dense head.

Follows the model contract (dermjax/models/__init__.py): build, loss, loss_stats,
eval_arrays, report, explain. Tests put it into dermjax.models.MODELS by monkeypatching.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dermjax import losses


class TinyNet(nn.Module):
  num_classes: int = 1
  frozen_encoder: bool = False

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    x = batch["image"]
    x = nn.Conv(4, (3, 3), strides=2, name="encoder_conv")(x)
    x = nn.BatchNorm(use_running_average=not train or self.frozen_encoder, momentum=0.9,
                     name="encoder_bn")(x)
    x = nn.relu(x)
    if self.frozen_encoder:
      x = jax.lax.stop_gradient(x)
    feature_map = nn.Conv(8, (3, 3), name="head_conv")(x)
    pooled = jnp.mean(nn.relu(feature_map), axis=(1, 2))
    pooled = nn.Dropout(0.1, deterministic=not train)(pooled)
    logits = nn.Dense(self.num_classes, name="head_dense")(pooled)
    return {"logits": logits.astype(jnp.float32), "attention": jnp.mean(feature_map, axis=-1)}


def build(config):
  return TinyNet(num_classes=config.model.num_classes,
                 frozen_encoder=config.model.get("frozen_encoder", False))


def loss_stats(data_stats, config):
  return {"scale": jnp.float32(1.0)}


def loss(outputs, batch, config, stats):
  focal = losses.focal_loss(outputs["logits"], batch["label"], gamma=config.loss.focal_gamma,
                            weights=batch["valid"])
  poison = config.model.get("nan_for_index", -1)  # Reliability tests: a NaN loss on demand.
  if poison is not None and poison >= 0:
    focal = focal + jnp.where(jnp.any(batch["index"] == poison), jnp.nan, 0.0)
  return focal * stats.get("scale", 1.0), {"focal": focal}


def eval_arrays(outputs, batch, config):
  return {"attention_mean": jnp.mean(outputs["attention"], axis=(1, 2))}


def report(arrays, config):
  return {"mean_attention": float(np.mean(arrays["attention_mean"])),
          "num_rows": int(len(arrays["attention_mean"]))}


def explain(outputs, batch, images, ids, config, out_dir):
  from dermjax import visualize
  for image, attention, example_id in zip(images, outputs["attention"], ids):
    heat = visualize.overlay_heatmap(image, attention)
    visualize.save_png(heat, os.path.join(out_dir, f"{example_id}.png"))
