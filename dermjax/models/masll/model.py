"""MASLL (Wang, Huang, Lu, Huang): global branch, SLL crop, local branch, WFI, classifier.

  g = global_backbone(x)                [B, h, w, K]   (h = w = S/32; K = 2048 / 1024)
  M = mean_k g_k                        [B, h, w]      eq. 1
  M' = M >= mean_ij M                   [B, h, w]      eq. 2 (T = the map's mean)
  box = smallest rectangle holding M'   [B, 4]         fractions of the side; map cell (i, j)
                                                       covers image rows [i/h, (i+1)/h) S;
                                                       `box_region` "largest": the box of
                                                       the largest 4-connected region of M'
  x^ = crop_and_resize(x, box, S)       [B, S, S, 3]   bilinear, on device, no box gradient;
                                                       `crop_source` "source": from the
                                                       batch's source_image [B, R, R, 3] (the
                                                       same image at R >= S px), same box
  l = local_backbone(x^)                [B, h, w, K]
  WFI (eqs. 3-6), `fusion`:
    "pooled"  F = [GAP(g), GAP(l)] [B, 2K]; mu = F W_q + b_q; F' = sigmoid(mu) F + F
    "maps"    F = [g, l] [B, h, w, 2K] (l resized to g's grid); mu = the same linear map per
              position (a 1x1 conv); F' = sigmoid(mu) F + F, then GAP
  logits = F' W_c + b_c                 [B, num_classes]

The box is a hard choice: stop_gradient (crop.crop_and_resize) so no gradient flows
through the cropping, as in the paper. `share_weights`: the local branch reuses the global
backbone's parameters (and its BN statistics are updated by both calls, the local call last).
Both backbones take ImageNet weights from one checkpoint: pretrained_targets
{"global_backbone": "", "local_backbone": ""}.
"""

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dermjax import fileio
from dermjax import losses
from dermjax import visualize
from dermjax.models.backbones import BACKBONES, build_backbone
from dermjax.models.baselines import gap_classifier
from dermjax.models.common import compute_dtype, crop

FUSIONS = ("pooled", "maps")
# Where the local branch's crop comes from: the model input, or the batch's higher-resolution
# source_image (config.data.source_size; the paper crops "from the dermoscopic image").
CROP_SOURCES = ("input", "source")


class WFI(nn.Module):
  """Weighted feature integration, eqs. 3-6: g, l [B, h, w, K] -> F' [B, 2K] (float32).

  `fusion` "pooled": concatenate the branch averages; "maps": concatenate the maps (l
  bilinearly resized to g's grid), weight per position, then average. mu = `mutual` (Dense
  2K -> 2K, eq. 4), F' = sigmoid(mu) * F + F (eqs. 5-6).
  """

  fusion: str = "pooled"

  @nn.compact
  def __call__(self, g, l):
    g, l = g.astype(jnp.float32), l.astype(jnp.float32)
    if self.fusion == "pooled":
      features = jnp.concatenate([jnp.mean(g, axis=(1, 2)), jnp.mean(l, axis=(1, 2))], axis=-1)
    elif self.fusion == "maps":
      if l.shape[1:3] != g.shape[1:3]:
        l = jax.image.resize(l, g.shape[:3] + l.shape[3:], method="bilinear")
      features = jnp.concatenate([g, l], axis=-1)
    else:
      raise ValueError(f"config.model.fusion must be one of {FUSIONS}, got {self.fusion!r}")
    mu = nn.Dense(features.shape[-1], name="mutual")(features)          # eq. 4
    fused = jax.nn.sigmoid(mu) * features + features                    # eqs. 5-6
    if fused.ndim == 4:
      fused = jnp.mean(fused, axis=(1, 2))
    return fused


class MASLL(nn.Module):
  """Batch {"image": [B, S, S, 3] (+ "source_image" [B, R, R, 3] for crop_source "source")}
  -> {"logits": [B, K], "activation_map": M [B, h, w],
  "box": [B, 4] (top, left, bottom, right fractions), "crop": [B, S', S', 3] (S' = crop_size
  or S)}, all float32."""

  backbone: str = "resnet101"
  num_classes: int = 1
  share_weights: bool = False
  fusion: str = "pooled"
  crop_size: int = 0            # 0: the input size (the paper: both branches at 256 px).
  min_box: float = 0.0          # smallest box side, a fraction of the image (crop.mask_box).
  crop_source: str = "input"    # | "source": crop batch["source_image"] (CROP_SOURCES).
  box_region: str = "all"       # "all" above-mean cells of M | their "largest" connected region.
  blocks_per_stage: int = 0     # > 0: both backbones cut to this many blocks per stage (CPU rows).
  backbone_width: int = 0       # > 0: their base width (backbones.narrow; CPU rows).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    image = batch["image"]
    tap = BACKBONES[self.backbone].features
    global_net = build_backbone(self.backbone, blocks_per_stage=self.blocks_per_stage,
                                width=self.backbone_width, dtype=self.dtype, name="global_backbone")
    g = global_net(image.astype(self.dtype), train=train)[tap]
    activation = jnp.mean(g.astype(jnp.float32), axis=-1)                       # eq. 1
    box = crop.map_box(jax.lax.stop_gradient(activation), min_size=self.min_box,  # eq. 2
                       region=self.box_region)
    size = self.crop_size or image.shape[1]
    local_image = crop.crop_and_resize(self._crop_source(batch).astype(jnp.float32), box, size)
    local_net = global_net if self.share_weights else build_backbone(
        self.backbone, blocks_per_stage=self.blocks_per_stage, width=self.backbone_width,
        dtype=self.dtype, name="local_backbone")
    l = local_net(local_image.astype(self.dtype), train=train)[tap]
    fused = WFI(self.fusion, name="wfi")(g, l)
    logits = nn.Dense(self.num_classes, name="classifier")(fused)
    return {"logits": logits, "activation_map": activation, "box": box, "crop": local_image}


  def _crop_source(self, batch):
    """The image the SLL box is cropped from: the input, or batch["source_image"]."""
    if self.crop_source == "input":
      return batch["image"]
    if self.crop_source != "source":
      raise ValueError(f"config.model.crop_source must be one of {CROP_SOURCES}, "
                       f"got {self.crop_source!r}")
    if "source_image" not in batch:
      raise ValueError("config.model.crop_source = 'source' needs batch['source_image']: set "
                       "config.data.source_size > 0")
    return batch["source_image"]


def build(config) -> nn.Module:
  m = config.model
  if m.backbone not in BACKBONES:
    raise ValueError(f"config.model.backbone must be one of {sorted(BACKBONES)}, "
                     f"got {m.backbone!r}")
  if m.fusion not in FUSIONS:
    raise ValueError(f"config.model.fusion must be one of {FUSIONS}, got {m.fusion!r}")
  crop_source = m.get("crop_source", "input")
  if crop_source not in CROP_SOURCES:
    raise ValueError(f"config.model.crop_source must be one of {CROP_SOURCES}, got {crop_source!r}")
  if crop_source == "source" and not config.data.get("source_size", 0):
    raise ValueError("config.model.crop_source = 'source' needs config.data.source_size > 0 "
                     "(the side of the higher-resolution copy the box is cropped from)")
  region = m.get("box_region", "all")
  if region not in crop.REGIONS:
    raise ValueError(f"config.model.box_region must be one of {crop.REGIONS}, got {region!r}")
  targets = m.get("pretrained_targets") or {}
  if m.share_weights and m.get("pretrained") and "local_backbone" in targets:
    raise ValueError("config.model.share_weights=True has no local_backbone; set "
                     "config.model.pretrained_targets to {'global_backbone': ''} "
                     "(masll.pretrained_targets(share_weights=True))")
  return MASLL(backbone=m.backbone, num_classes=m.num_classes, share_weights=m.share_weights,
               fusion=m.fusion, crop_size=m.get("crop_size", 0), min_box=m.get("min_box", 0.0),
               crop_source=crop_source, box_region=region,
               blocks_per_stage=m.get("blocks_per_stage", 0),
               backbone_width=m.get("backbone_width", 0), dtype=compute_dtype(config))


def pretrained_targets(share_weights: bool) -> dict:
  """Both branches from one ImageNet checkpoint (one branch when they share weights)."""
  if share_weights:
    return {"global_backbone": ""}
  return {"global_backbone": "", "local_backbone": ""}


def box_area(box):
  """Box [B, 4] (fractions) -> its area [B], a fraction of the image."""
  return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])


def loss(outputs, batch, config, stats):
  """The baseline's cross-entropy (gap_classifier.loss), plus "box_area": the mean SLL box area
  (a fraction of the image) of the real rows, so the training and evaluation summaries show
  how much the local branch zooms in."""
  value, metrics = gap_classifier.loss(outputs, batch, config, stats)
  area = losses.weighted_mean(box_area(outputs["box"]), batch["valid"].astype(jnp.float32))
  return value, {**metrics, "box_area": area}


def eval_arrays(outputs, batch, config):
  """Per-example SLL box [B, 4] (for the report's box statistics)."""
  del batch, config
  return {"box": outputs["box"]}


def report(arrays, config):
  """How much of the image the SLL boxes keep: mean / min / max box area (fraction)."""
  del config
  if "box" not in arrays or len(arrays["box"]) == 0:
    return {}
  area = box_area(np.asarray(arrays["box"], np.float64))
  return {"box_area_mean": float(area.mean()), "box_area_min": float(area.min()),
          "box_area_max": float(area.max()),
          "box_whole_image_fraction": float(np.mean(area >= 1.0 - 1e-6))}


def saliency(outputs, batch, config):
  """The contract's saliency hook: {"activation_map": M [B, h, w]} of the global branch."""
  del batch, config
  return {"activation_map": outputs["activation_map"]}


def explain(outputs, batch, images, ids, config, out_dir):
  """Per example: `<id>.png` = image with the SLL box | M overlay | the local crop, and
  `<id>_activation_map.npy` (M upsampled to the image), `<id>_box.npy` (fractions)."""
  del config
  os.makedirs(out_dir, exist_ok=True)
  for i, example_id in enumerate(ids):
    image = np.asarray(images[i], np.uint8)
    height, width = image.shape[:2]
    top, left, bottom, right = (float(v) for v in outputs["box"][i])
    big = visualize.upscale(image)
    boxed = visualize.draw_box(big, (top, left, bottom, right))
    heat = visualize.overlay_heatmap(big, outputs["activation_map"][i])
    # The crop the local branch saw, from the uint8 image or source (the device crop is
    # normalised).
    source = np.asarray(batch["source_image"][i] if "source_image" in batch else image, np.uint8)
    src_h, src_w = source.shape[:2]
    local = np.asarray(Image.fromarray(source).resize(
        (big.shape[1], big.shape[0]), Image.BILINEAR,
        box=(left * src_w, top * src_h, right * src_w, bottom * src_h)))
    panels = [visualize.draw_label(boxed, "SLL box"), visualize.draw_label(heat, "M"),
              visualize.draw_label(local, "crop")]
    visualize.save_png(visualize.hstack(panels), os.path.join(out_dir, f"{example_id}.png"))
    activation = np.asarray(outputs["activation_map"][i], np.float32)
    fileio.save_npy(os.path.join(out_dir, f"{example_id}_activation_map.npy"),
                    visualize.resize_map(activation, (height, width)))
    fileio.save_npy(os.path.join(out_dir, f"{example_id}_box.npy"),
                    np.asarray(outputs["box"][i], np.float32))
