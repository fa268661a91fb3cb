"""The gaze structure loss (thesis eqs. 10-16): Hungarian-matched 1 - softIoU + CE, eq. 14."""

import jax
import jax.numpy as jnp

from dermjax import losses
from dermjax.data import schema
from dermjax.data.structures import structure_masks, structure_presence
from dermjax.models.gaze import balancing, matchers


def training_presence(data_stats: dict):
  """[S] structure presences P_s of the training split from a prepared dataset's stats.json
  (dermjax.data.prepare: splits -> train -> structure_presence, name -> count), or None."""
  try:
    counts = data_stats["splits"]["train"]["structure_presence"]
  except (KeyError, TypeError):
    return None
  missing = [name for name in schema.STRUCTURES if name not in counts]
  if missing:
    raise ValueError(f"stats.json splits/train/structure_presence lacks {missing} "
                     f"(expected {schema.STRUCTURES})")
  return [int(counts[name]) for name in schema.STRUCTURES]


def loss_stats(data_stats: dict, config) -> dict:
  """Per-structure balancing weights [S] from the training split's structure presences."""
  mode = config.loss.balancing
  presence = training_presence(data_stats)
  if presence is None:
    if mode in ("presence_others", "presence_inverse"):
      raise ValueError(f"config.loss.balancing={mode!r} needs the training split's structure "
                       "presences (stats.json splits/train/structure_presence), which are missing")
    presence = [1] * schema.NUM_STRUCTURES
  return {"structure_weights": balancing.structure_weights(presence, mode)}


def structure_targets(batch):
  """Batch -> GT structures [B, H, W, S] and valid rows [B, S] (present and annotated)."""
  gt = structure_masks(batch["masks"])
  present = structure_presence(gt)
  lesion = (batch["has_lesion_mask"] > 0.5)[:, None]
  attributes = (batch["has_attributes"] > 0.5)[:, None]
  num_attr = schema.NUM_STRUCTURES - 2
  annotated = jnp.concatenate([lesion, lesion, jnp.repeat(attributes, num_attr, 1)], 1)
  return gt, present & annotated


def soft_iou_matrix(pred, gt, eps: float = 1e-6):
  """Eq. 10 for every pair: pred [B, T, H, W] probabilities, gt [B, H, W, S] -> [B, S, T].

  <p, m> / (|p|_1 + |m|_1 - <p, m>) (after Salvador et al.'s RSIS; the "+" in the thesis's
  printed denominator is the union's "-").
  """
  pred, gt = pred.astype(jnp.float32), gt.astype(jnp.float32)
  inter = jnp.einsum("bthw,bhws->bst", pred, gt)
  union = jnp.sum(gt, axis=(1, 2))[:, :, None] + jnp.sum(pred, axis=(2, 3))[:, None, :] - inter
  return (inter + eps) / (union + eps)


def structure_loss(masks, structure_logits, gt, valid_rows, *, class_weights, balancing_mode,
                   matcher="host", example_weights=None, match_steps="all"):
  """Matched segmentation (1 - softIoU) and classification (CE) losses.

  masks [B, T, H, W] probabilities; structure_logits [B, T, S]; gt [B, H, W, S]; valid_rows
  [B, S]; class_weights [S]; match_steps "all" | "first_present" (gaze.matchers). Returns
  (L_seg, L_class, assignment [B, S] int, -1 unmatched). Both are balanced means over the
  matched pairs (gaze.balancing.balanced_mean).
  """
  cost = 1.0 - soft_iou_matrix(masks, gt)                       # [B, S, T]
  assignment = matchers.match(cost, valid_rows, matcher, match_steps)   # no gradient
  matched = assignment >= 0
  idx = jnp.maximum(assignment, 0)
  seg = jnp.take_along_axis(cost, idx[:, :, None], axis=2)[:, :, 0]              # [B, S]
  log_p = jax.nn.log_softmax(structure_logits.astype(jnp.float32), axis=-1)       # [B, T, S]
  log_p_matched = jnp.take_along_axis(log_p, idx[:, :, None], axis=1)             # [B, S, S]
  ce = -jnp.diagonal(log_p_matched, axis1=1, axis2=2)                             # [B, S]
  mean = lambda terms: balancing.balanced_mean(terms, matched, class_weights, balancing_mode,
                                               example_weights)
  return mean(seg), mean(ce), assignment


def loss(outputs, batch, config, stats):
  """L = alpha L_diag + beta (gamma L_seg + mu L_class) (eq. 14); L_diag alone without decoder."""
  lc = config.loss
  valid = batch["valid"]
  l_diag = losses.focal_loss(outputs["logits"], batch["label"], gamma=lc.focal_gamma, weights=valid)
  metrics = {"loss_diag": l_diag}
  if "masks" not in outputs:
    metrics["loss"] = l_diag
    return l_diag, metrics
  gt, valid_rows = structure_targets(batch)
  class_weights = stats.get("structure_weights", jnp.ones((schema.NUM_STRUCTURES,), jnp.float32))
  l_seg, l_class, assignment = structure_loss(
      outputs["masks"], outputs["structure_logits"], gt, valid_rows, class_weights=class_weights,
      balancing_mode=lc.balancing, matcher=lc.matcher, example_weights=valid,
      match_steps=lc.get("match_steps", "all"))
  total = lc.alpha * l_diag + lc.beta * (lc.gamma * l_seg + lc.mu * l_class)
  matched = jnp.sum((assignment >= 0) * valid[:, None]) / jnp.maximum(jnp.sum(valid), 1.0)
  metrics.update(loss=total, loss_seg=l_seg, loss_class=l_class, matched_per_image=matched)
  return total, metrics
