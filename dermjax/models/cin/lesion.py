"""CIN stage 1: the lesion area attention module (Sec. 2, Fig. 2), model name "cin_lesion".

Attention part: a U-Net on an ImageNet ResNet (default ResNet-18, `dermjax.models.backbones`):
the encoder taps layer1..layer4 (strides 4..32); the decoder upsamples (bilinear) and
concatenates layer3, layer2, layer1 with two 3x3 conv-BN-ReLU after each, then a 1x1 conv
to 2 classes (background, lesion) at stride 4, bilinearly resized to the image: the lesion
area map = softmax probability of "lesion". Its box is the smallest rectangle holding the
map >= `threshold` (dermjax.models.common.crop.mask_box; empty -> the whole image).

Auxiliary part (training only): the image is cropped (crop.crop_and_resize, on device) by
the predicted box and by the ground-truth mask's box; both crops go through the same two
conv blocks and an L1 loss compares the two crops' features after each block. A box is a
hard choice (no gradient), so with plain image crops the L1 could not reach the segmenter:
with `aux_input = "masked"` (default) each crop is of the image times its map (the soft
predicted lesion probability; the GT mask), so the L1 is differentiable in the predicted
map and penalises its boundary errors; "image" is the literal plain-image crop. The conv
blocks are kept at their random initialisation (configs/cin.py freezes "aux_block" by an
optimiser group of rate 0): trained only by this L1, both would collapse to zero features.

Loss: pixel cross-entropy against batch["masks"][..., 0], per image averaged, weighted by
has_lesion_mask * valid; + loss.aux_weight * sum over blocks of the L1. No "logits": the
trainer skips diagnosis metrics; `report` gives the Jaccard and the ISIC thresholded Jaccard.
"""

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dermjax import fileio
from dermjax import visualize
from dermjax.metrics import attention as attention_metrics
from dermjax.metrics import segmentation
from dermjax.models.backbones import build_backbone
from dermjax.models.backbones.layers import batch_norm
from dermjax.models.common import compute_dtype, crop
from dermjax.models.common import explain as common_explain

AUX_INPUTS = ("masked", "image")


class ConvBNReLU(nn.Module):
  """3x3 conv (no bias) + BatchNorm + ReLU: [B, H, W, C] -> [B, H, W, features]."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv")(x)
    return nn.relu(batch_norm(train, False, self.dtype, "bn")(x))


class LesionAttention(nn.Module):
  """Stage 1. __call__(batch, train) with batch {"image": [B, S, S, 3][, "masks": [B, S, S, 1+A]]}
  -> {"lesion_logits" [B, S, S, 2], "lesion_map" [B, S, S] in [0, 1], "box" [B, 4]} and,
  in training (and at init) with masks given, "aux_pred_<k>", "aux_gt_<k>" block features
  [B, s_k, s_k, f_k] and "gt_box" [B, 4]."""

  arch: str = "resnet18"
  decoder_features: Sequence[int] = (256, 128, 64)
  threshold: float = 0.5
  min_box: float = 0.1
  aux_size: int = 64
  aux_features: Sequence[int] = (32, 64)
  aux_input: str = "masked"
  blocks_per_stage: int = 0     # > 0 / width > 0: the CPU-sized encoder (backbones.build_backbone).
  width: int = 0
  dtype: Any = jnp.float32

  def setup(self):
    if self.aux_input not in AUX_INPUTS:
      raise ValueError(f"model.lesion.aux_input must be one of {AUX_INPUTS}, got {self.aux_input!r}")
    self.encoder = build_backbone(self.arch, blocks_per_stage=self.blocks_per_stage, width=self.width,
                                  dtype=self.dtype)
    self.decoder = [[ConvBNReLU(f, self.dtype, name=f"decoder{i}_{j}") for j in range(2)]
                    for i, f in enumerate(self.decoder_features)]
    self.head = nn.Conv(2, (1, 1), dtype=self.dtype, name="head")
    self.aux_blocks = [AuxBlock(f, self.dtype, name=f"aux_block{k}")
                       for k, f in enumerate(self.aux_features)]

  def segment(self, image, *, train: bool):
    """image [B, S, S, 3] -> lesion logits [B, S, S, 2] float32."""
    taps = self.encoder(image, train=train)
    x = taps["layer4"]
    skips = ("layer3", "layer2", "layer1")[:len(self.decoder_features)]
    for skip, convs in zip(skips, self.decoder):
      y = taps[skip]
      x = jax.image.resize(x, x.shape[:1] + y.shape[1:3] + x.shape[3:], "bilinear")
      x = jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
      for conv in convs:
        x = conv(x, train=train)
    logits = self.head(x).astype(jnp.float32)
    return jax.image.resize(logits, image.shape[:3] + (2,), "bilinear")

  def __call__(self, batch, *, train: bool = False):
    image = batch["image"]
    logits = self.segment(image, train=train)
    lesion_map = jax.nn.softmax(logits, axis=-1)[..., 1]
    box = crop.mask_box(jax.lax.stop_gradient(lesion_map) >= self.threshold, min_size=self.min_box)
    out = {"lesion_logits": logits, "lesion_map": lesion_map, "box": box}
    if (train or self.is_initializing()) and "masks" in batch:
      gt = batch["masks"][..., 0].astype(jnp.float32)
      gt_box = crop.mask_box(gt > 0.5, min_size=self.min_box)
      out["gt_box"] = gt_box
      for k, (pred, truth) in enumerate(self.auxiliary(image, lesion_map, gt, box, gt_box)):
        out[f"aux_pred_{k}"], out[f"aux_gt_{k}"] = pred, truth
    return out

  def auxiliary(self, image, lesion_map, gt, box, gt_box):
    """[(pred features, GT features)] after each aux block for the two crops (see module doc)."""
    pred_in, gt_in = image.astype(jnp.float32), image.astype(jnp.float32)
    if self.aux_input == "masked":
      pred_in, gt_in = pred_in * lesion_map[..., None], gt_in * gt[..., None]
    x = jnp.concatenate([crop.crop_and_resize(pred_in, box, self.aux_size),
                         crop.crop_and_resize(gt_in, gt_box, self.aux_size)], axis=0)
    feats = []
    for block in self.aux_blocks:
      x = block(x)
      pred, truth = jnp.split(x.astype(jnp.float32), 2, axis=0)
      feats.append((pred, truth))
    return feats


class AuxBlock(nn.Module):
  """Two 3x3 conv + ReLU, then 2x2 max pool: [N, s, s, C] -> [N, s/2, s/2, features]."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = nn.relu(nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name=f"conv{i}")(x))
    return nn.max_pool(x, (2, 2), (2, 2))


def module_kwargs(config) -> dict:
  """LesionAttention fields from config.model.lesion (shared by stage 1 and stage 2)."""
  c = config.model.lesion
  return dict(arch=c.arch, decoder_features=tuple(c.decoder_features), threshold=c.threshold,
              min_box=c.min_box, aux_size=c.aux_size, aux_features=tuple(c.aux_features),
              aux_input=c.aux_input, blocks_per_stage=c.get("blocks_per_stage", 0),
              width=c.get("width", 0), dtype=compute_dtype(config))


def build(config):
  return LesionAttention(**module_kwargs(config))


def aux_l1(outputs):
  """[B] per-image L1 (mean |pred - gt| over each block's features, summed over blocks)."""
  total = 0.0
  k = 0
  while f"aux_pred_{k}" in outputs:
    diff = jnp.abs(outputs[f"aux_pred_{k}"] - outputs[f"aux_gt_{k}"])
    total = total + jnp.mean(diff, axis=(1, 2, 3))
    k += 1
  return total


def loss(outputs, batch, config, stats):
  """Pixel CE on the lesion mask (+ aux_weight * L1 in training); images without a GT mask
  (has_lesion_mask 0) and padding rows do not count."""
  del stats
  weight = batch["valid"].astype(jnp.float32) * batch["has_lesion_mask"].astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  gt = (batch["masks"][..., 0] > 0.5).astype(jnp.int32)
  logp = jax.nn.log_softmax(outputs["lesion_logits"], axis=-1)
  ce = -jnp.mean(jnp.take_along_axis(logp, gt[..., None], axis=-1)[..., 0], axis=(1, 2))
  ce = jnp.sum(weight * ce) / count
  metrics = {"cross_entropy": ce}
  total = ce
  if "aux_pred_0" in outputs:
    l1 = jnp.sum(weight * aux_l1(outputs)) / count
    metrics["aux_l1"] = l1
    total = total + config.loss.aux_weight * l1
  metrics["loss"] = total
  return total, metrics


def eval_arrays(outputs, batch, config):
  """Per-image pixel counts of the thresholded map vs the GT lesion mask, and has_lesion_mask."""
  pred = (outputs["lesion_map"] >= config.model.lesion.threshold).astype(jnp.float32)
  inter, union = attention_metrics.intersection_union(pred, batch["masks"][..., 0])
  return {"seg_intersection": inter, "seg_union": union,
          "has_lesion_mask": batch["has_lesion_mask"].astype(jnp.float32)}


def report(arrays, config):
  """{"jaccard", "thresholded_jaccard", "num_masks"} over images with a GT lesion mask."""
  del config
  keep = np.asarray(arrays["has_lesion_mask"]) > 0.5
  inter, union = np.asarray(arrays["seg_intersection"])[keep], np.asarray(arrays["seg_union"])[keep]
  return {"jaccard": segmentation.mean_jaccard(inter, union),
          "thresholded_jaccard": segmentation.thresholded_jaccard(inter, union),
          "num_masks": int(keep.sum())}


def box_panel(image, boxes, colors):
  """uint8 image (enlarged for legibility) with each [4] fraction box drawn in its colour."""
  image = visualize.upscale(image)
  for box, color in zip(boxes, colors):
    image = visualize.draw_box(image, box, color=color)
  return image


def explain(outputs, batch, images, ids, config, out_dir):
  """Per image: image with the predicted (red) and GT (green) boxes | GT mask | lesion map;
  plus <id>_lesion_map.npy and <id>_box.npy (top, left, bottom, right fractions)."""
  del config
  masks = common_explain.lesion_masks(batch, len(ids))
  gt_boxes = [None if m is None else np.asarray(crop.mask_box(m[None] > 0.5))[0] for m in
              (masks or [None] * len(ids))]
  write_explanations(outputs["lesion_map"], outputs["box"], images, ids, out_dir, masks=masks,
                     gt_boxes=gt_boxes)


def write_explanations(lesion_map, boxes, images, ids, out_dir, *, masks=None, gt_boxes=None):
  """The stage-1 panels and arrays (see `explain`)."""
  os.makedirs(out_dir, exist_ok=True)
  for i, example_id in enumerate(ids):
    image = visualize.upscale(images[i])
    marks = [np.asarray(boxes[i])] + ([gt_boxes[i]] if gt_boxes and gt_boxes[i] is not None else [])
    panels = [box_panel(images[i], marks, [(255, 0, 0), (0, 255, 0)])]
    if masks is not None and masks[i] is not None:
      panels.append(visualize.overlay_mask(image, masks[i], color=(0, 255, 0)))
    panels.append(visualize.overlay_heatmap(image, np.asarray(lesion_map[i], np.float32)))
    fileio.save_npy(os.path.join(out_dir, f"{example_id}_lesion_map.npy"), np.asarray(lesion_map[i], np.float32))
    fileio.save_npy(os.path.join(out_dir, f"{example_id}_box.npy"), np.asarray(boxes[i], np.float32))
    visualize.save_png(visualize.hstack(panels), os.path.join(out_dir, f"{example_id}.png"))
