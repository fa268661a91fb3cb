"""Any ImageNet backbone + global average pooling + one dense layer, model name "gap_classifier".

`config.model.backbone` names the architecture (a `dermjax.models.backbones.BACKBONES` key,
e.g. "resnet101", "densenet121"); its last feature map (the registry's `features` tap) is
averaged over space and classified by `classifier` (Dense). This is torchvision's own
ResNet / DenseNet head, so the MASLL baselines (Table I: ResNet101, DenseNet121) and any
other paper's "plain backbone" row use it. The class activation map (Zhou et al. 2016) of
the melanoma class, CAM = sum_c w_c features_c, is an output and is explained as an overlay.

Loss: focal loss with `config.loss.focal_gamma` (0 = cross-entropy) on batch["label"].
ImageNet weights: `pretrained_targets()` = {"backbone": ""} (the checkpoint's classifier
is not loaded: the class count differs).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from dermjax import losses
from dermjax.models.backbones import BACKBONES, build_backbone
from dermjax.models.common import compute_dtype, explain as common_explain


def melanoma_column(num_classes: int) -> int:
  """The output read as the melanoma score: the single sigmoid output, or class 1 of K."""
  return min(1, num_classes - 1)


class GAPClassifier(nn.Module):
  """Image [B, S, S, 3] -> {"logits": [B, K], "cam": [B, S/32, S/32]} (float32)."""

  backbone: str = "resnet101"
  num_classes: int = 1
  blocks_per_stage: int = 0     # > 0: the backbone cut to this many blocks per stage (CPU rows).
  backbone_width: int = 0       # > 0: its base width (backbones.narrow; CPU rows).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    spec = BACKBONES[self.backbone]
    features = build_backbone(self.backbone, blocks_per_stage=self.blocks_per_stage,
                              width=self.backbone_width, dtype=self.dtype, name="backbone")(
        batch["image"].astype(self.dtype), train=train)[spec.features].astype(jnp.float32)
    dense = nn.Dense(self.num_classes, name="classifier")
    logits = dense(jnp.mean(features, axis=(1, 2)))
    kernel = dense.variables["params"]["kernel"]                        # [C, K]
    cam = jnp.einsum("bhwc,c->bhw", features, kernel[:, melanoma_column(self.num_classes)])
    return {"logits": logits, "cam": cam}


def pretrained_targets() -> dict:
  """`model.pretrained_targets` for an ImageNet checkpoint of `model.backbone`."""
  return {"backbone": ""}


def build(config) -> nn.Module:
  m = config.model
  if m.backbone not in BACKBONES:
    raise ValueError(f"config.model.backbone must be one of {sorted(BACKBONES)}, "
                     f"got {m.backbone!r}")
  return GAPClassifier(backbone=m.backbone, num_classes=m.num_classes,
                       blocks_per_stage=m.get("blocks_per_stage", 0),
                       backbone_width=m.get("backbone_width", 0), dtype=compute_dtype(config))


def loss(outputs, batch, config, stats):
  """Focal loss (gamma = config.loss.focal_gamma; 0 is cross-entropy), padding rows left out."""
  del stats
  value = losses.focal_loss(outputs["logits"], batch["label"], gamma=config.loss.focal_gamma,
                            weights=batch["valid"])
  name = "cross_entropy" if float(config.loss.focal_gamma) == 0.0 else "focal"
  return value, {name: value, "loss": value}


def saliency(outputs, batch, config):
  """The contract's saliency hook: {"cam": [B, h, w]}."""
  del batch, config
  return {"cam": outputs["cam"]}


def explain(outputs, batch, images, ids, config, out_dir):
  """The melanoma CAM upsampled onto each image, next to the lesion mask."""
  del config
  common_explain.save_overlays({"cam": np.asarray(outputs["cam"])}, images, ids, out_dir,
                               common_explain.lesion_masks(batch, len(ids)))
