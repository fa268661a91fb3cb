"""VGG-16(-BN) baselines (AttnMel Tables 1-3, gaze Table 3), model name "vgg16".

`config.model.head`:
  "fc"   VGG-16: torchvision's classifier (adaptive-avg-pool to 7x7, fc6 4096, fc7 4096 with
         dropout, fc8 num_classes), `dermjax.models.backbones.vgg.VGGClassifierHead`, so a
         torchvision checkpoint's `classifier.0/3` load into fc6/fc7 (fc8 is new: 2 outputs).
  "gap"  VGG-16-GAP: global average pooling of pool-5 and one dense layer. Its class
         activation map (Zhou et al. 2016) CAM_k = sum_c w_ck pool5_c is an output, explained
         as an overlay and scored against the lesion mask like AttnMel's attention maps.
`config.model.batch_norm`: VGG-16-BN (True) or plain VGG-16.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from dermjax import losses
from dermjax.metrics import attention as attention_metrics
from dermjax.models.backbones.vgg import VGGStages
from dermjax.models.common import compute_dtype, explain as common_explain

HEADS = ("fc", "gap")


class VGGClassifier(nn.Module):
  """Image [B, H, W, 3] -> {"logits": [B, K]} (+ "cam": [B, H/32, W/32] for the GAP head).

  The CAM is for the melanoma class: class 1 with K >= 2 outputs, the single output with K = 1.
  """

  num_classes: int = 2
  head: str = "fc"
  batch_norm: bool = True
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    image = batch["image"].astype(self.dtype)
    if self.head == "fc":
      taps = VGGStages(batch_norm=self.batch_norm, dtype=self.dtype, num_classes=self.num_classes,
                       name="backbone")(image, train=train)
      return {"logits": taps["logits"].astype(jnp.float32)}
    if self.head != "gap":
      raise ValueError(f"config.model.head must be one of {HEADS}, got {self.head!r}")
    pool5 = VGGStages(batch_norm=self.batch_norm, dtype=self.dtype, name="backbone")(
        image, train=train)["pool5"].astype(jnp.float32)
    dense = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="classifier")
    logits = dense(jnp.mean(pool5, axis=(1, 2)))
    kernel = dense.variables["params"]["kernel"]                       # [512, K]
    cam = jnp.einsum("bhwc,c->bhw", pool5, kernel[:, min(1, self.num_classes - 1)])
    return {"logits": logits, "cam": cam}


def pretrained_targets(head: str) -> dict:
  """`model.pretrained_targets` for an ImageNet VGG-16(-BN) checkpoint: blocks 1-5, plus
  fc6/fc7 of the "fc" head; fc8 (new class count) and the GAP classifier stay random."""
  blocks = [f"block{b}" for b in range(1, 6)]
  if head == "fc":
    return {f"backbone/{p}": p for p in blocks + ["head/fc6", "head/fc7"]}
  return {f"backbone/{p}": p for p in blocks}


def build(config) -> nn.Module:
  m = config.model
  if m.head not in HEADS:
    raise ValueError(f"config.model.head must be one of {HEADS}, got {m.head!r}")
  return VGGClassifier(num_classes=m.num_classes, head=m.head, batch_norm=m.batch_norm,
                       dtype=compute_dtype(config))


def loss(outputs, batch, config, stats):
  """Focal loss on batch["label"], weighted by batch["valid"]."""
  del stats
  focal = losses.focal_loss(outputs["logits"], batch["label"], gamma=config.loss.focal_gamma,
                            weights=batch["valid"])
  return focal, {"focal": focal, "loss": focal}


def eval_arrays(outputs, batch, config):
  """Per-example Jaccard of the binarised CAM with the lesion mask (GAP head only)."""
  del config
  if "cam" not in outputs:
    return {}
  return attention_metrics.map_jaccard_arrays({"cam": outputs["cam"]}, batch["masks"][..., 0],
                                              batch["has_lesion_mask"])


def report(arrays, config):
  """The CAM column of AttnMel's Table 3."""
  del config
  return attention_metrics.jaccard_report(arrays)


def saliency(outputs, batch, config):
  """The contract's saliency hook: {"cam": [B, h, w]} for VGG-16-GAP (none for VGG-16)."""
  del batch, config
  return {"cam": outputs["cam"]} if "cam" in outputs else {}


def explain(outputs, batch, images, ids, config, out_dir):
  """Class activation maps upsampled onto the image, next to the lesion mask (both cropped
  as the model saw them, common.explain.model_view)."""
  if "cam" not in outputs:
    return
  images, batch = common_explain.model_view(images, batch, config)
  common_explain.save_overlays({"cam": np.asarray(outputs["cam"])}, images, ids, out_dir,
                               common_explain.lesion_masks(batch, len(ids)))
