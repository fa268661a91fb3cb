"""Gaze evaluation hooks: per-example IoU arrays and the split report (mAP eq. 20, ...)."""

import jax.numpy as jnp

from dermjax.data import schema
from dermjax.models.gaze import segmentation
from dermjax.models.gaze.loss import soft_iou_matrix, structure_targets


def eval_arrays(outputs, batch, config):
  """Small per-example arrays for the segmentation metrics (empty without decoder).

  iou / soft_iou [B, S, T] (binary masks at 0.5 / probabilities), present [B, S],
  pred_area [B, T] (pixels of each binarised mask), pred_structure [B, T] int32.
  """
  del config
  if "masks" not in outputs:
    return {}
  gt, valid_rows = structure_targets(batch)
  binary = (outputs["masks"] > 0.5).astype(jnp.float32)
  inter = jnp.einsum("bthw,bhws->bst", binary, gt)
  area_pred = jnp.sum(binary, axis=(2, 3))
  union = jnp.sum(gt, axis=(1, 2))[:, :, None] + area_pred[:, None, :] - inter
  return {
      "iou": jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0),
      "soft_iou": soft_iou_matrix(outputs["masks"], gt),
      "present": valid_rows,
      "pred_area": area_pred,
      "pred_structure": jnp.argmax(outputs["structure_logits"], axis=-1).astype(jnp.int32),
  }


def report(arrays, config):
  """Split metrics from the gathered eval_arrays: seg_map (the thesis's class-aware eq. 20),
  seg_map_agnostic, structure accuracy, Jaccard."""
  del config
  if "iou" not in arrays or len(arrays["iou"]) == 0:
    return {}
  return segmentation.summary(
      iou=arrays["iou"], soft_iou=arrays["soft_iou"], present=arrays["present"],
      pred_nonempty=arrays["pred_area"] > 0, pred_structure=arrays["pred_structure"],
      names=schema.STRUCTURES)
