"""Explanation faithfulness against known evidence, for any model's spatial maps.

Model-agnostic: a map is any [B, h, w] array over the model's input image (higher = more
attended), the evidence a 0/1 mask [B, H, W] at the input resolution (the synthetic
`hard` preset's evidence_mask). All functions are jnp, static-shaped and jit-friendly.

  pointing_game   1 where the map's maximum falls on an evidence cell, the evidence taken
                  at map resolution (a cell is evidence when any of its pixels is) and
                  dilated by `tolerance` cells (a (2t+1) x (2t+1) max filter); tolerance 0 by
                  default (a cell already counts with one evidence pixel; CPU-sized maps are
                  ~4 x 4). Tied maxima share the point: the score is the share of the cells
                  equal to the maximum that are hits (what a random pick among them scores),
                  so a constant map scores its chance level, not its first cell's (saturated
                  sigmoid attention ties at exactly 1.0 on many cells). Its chance level
                  (pointing_chance) is the share of such cells in the map.
  energy_share    sum(relu(map) * c) / sum(relu(map)), c the evidence's area share of each
                  map cell; its chance level is mean(c), the mask's area share (what a
                  uniform map gets). An all-zero map counts as uniform.
  deletion_curve  the model's positive-class score as the k/K most-attended pixels
                  (k = 0..K; the map upsampled bilinearly to the image, equal values in a
                  fixed pseudo-random order, so a constant region is deleted as the random
                  baseline would, not top rows first)
                  are replaced by the image's skin colour; a random order gives the
                  baseline. Its AUC (trapezoid over the fraction deleted, in [0, 1]) is
                  lower when the map points at what the score depends on.

`batch_metrics` computes all three for a dict of named maps inside one jitted function;
`summarize` reduces the per-example arrays over a split on the host.
"""

import jax
import jax.numpy as jnp
import numpy as np

RANDOM = "random"  # name of the random-order deletion baseline


def evidence_at(evidence, shape):
  """0/1 evidence [B, H, W] -> [B, h, w] area share of each map cell (in [0, 1]).

  Exact block means when h, w divide H, W; otherwise antialiased linear resampling."""
  evidence = jnp.asarray(evidence, jnp.float32)
  b, height, width = evidence.shape
  h, w = shape
  if height % h == 0 and width % w == 0:
    return evidence.reshape(b, h, height // h, w, width // w).mean(axis=(2, 4))
  return jnp.clip(jax.image.resize(evidence, (b, h, w), "linear", antialias=True), 0, 1)


def pointing_cells(evidence, shape, tolerance: int = 0):
  """evidence [B, H, W] -> float32 [B, h, w] 0/1: the cells a pointing-game hit may land on
  (evidence at map resolution, dilated by `tolerance` cells)."""
  cells = (evidence_at(evidence, shape) > 0).astype(jnp.float32)
  t = int(tolerance)
  if t > 0:
    cells = jax.lax.reduce_window(cells, -jnp.inf, jax.lax.max, (1, 2 * t + 1, 2 * t + 1),
                                  (1, 1, 1), ((0, 0), (t, t), (t, t)))
  return cells


def pointing_game(maps, evidence, tolerance: int = 0):
  """maps [B, h, w], evidence [B, H, W] -> float32 [B] in [0, 1]: the share of the map's
  maxima (cells equal to its maximum) that are hits; 1 or 0 for a unique maximum."""
  maps = jnp.asarray(maps, jnp.float32)
  cells = pointing_cells(evidence, maps.shape[1:], tolerance)
  top = (maps == jnp.max(maps, axis=(1, 2), keepdims=True)).astype(jnp.float32)
  return (top * cells).sum(axis=(1, 2)) / jnp.maximum(top.sum(axis=(1, 2)), 1.0)


def pointing_chance(shape, evidence, tolerance: int = 0):
  """[B]: the hit rate of a map whose maximum falls on a uniformly random cell of a map of
  `shape` (h, w): the share of pointing_cells (coarse maps and large tolerances inflate it)."""
  return pointing_cells(evidence, shape, tolerance).mean(axis=(1, 2))


def energy_share(maps, evidence):
  """maps [B, h, w], evidence [B, H, W] -> (share [B], chance [B]), float32."""
  maps = jax.nn.relu(jnp.asarray(maps, jnp.float32))
  cells = evidence_at(evidence, maps.shape[1:])
  chance = cells.mean(axis=(1, 2))
  total = maps.sum(axis=(1, 2))
  share = jnp.where(total > 0, (maps * cells).sum(axis=(1, 2)) / jnp.maximum(total, 1e-30),
                    chance)
  return share, chance


def skin_colour(images, lesion, has_lesion, xp=jnp):
  """images [B, H, W, C], lesion 0/1 [B, H, W], has_lesion [B] -> [B, C]: the mean colour
  outside the lesion (or of the image's one-pixel border without a lesion mask).
  xp: jax.numpy (on device) or numpy (host data pipelines)."""
  images = xp.asarray(images, xp.float32)
  _, height, width, _ = images.shape
  rows, cols = xp.arange(height)[:, None], xp.arange(width)[None]
  border = ((rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1))
  outside = xp.where(xp.asarray(has_lesion)[:, None, None] > 0.5,
                     1.0 - xp.asarray(lesion, xp.float32), border[None].astype(xp.float32))
  outside = xp.where(outside.sum(axis=(1, 2), keepdims=True) > 0, outside,
                     border[None].astype(xp.float32))
  weights = outside[..., None]
  return (images * weights).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))


# Equal map values are deleted in this fixed order (a key of its own, not the random
# baseline's): no spatial bias, and the same order for every map and run.
TIE_KEY = 1


def deletion_ranks(maps, image_shape):
  """maps [B, h, w] -> int32 [B, H * W]: each pixel's rank (0 = most attended) once the map
  is upsampled bilinearly to image_shape (H, W); equal values rank in a fixed pseudo-random
  order (TIE_KEY)."""
  maps = jnp.asarray(maps, jnp.float32)
  up = jax.image.resize(maps, (maps.shape[0],) + tuple(image_shape), "linear")
  shuffle = jax.random.permutation(jax.random.PRNGKey(TIE_KEY), int(np.prod(image_shape)))
  order = shuffle[jnp.argsort(-up.reshape(up.shape[0], -1)[:, shuffle], axis=1, stable=True)]
  return jnp.argsort(order, axis=1).astype(jnp.int32)


def random_ranks(key, batch: int, image_shape):
  """int32 [B, H * W]: a random deletion order per example."""
  n = int(np.prod(image_shape))
  return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, batch)).astype(
      jnp.int32)


def deletion_curve(score_fn, images, ranks, fill, steps: int, ends=None):
  """Scores [B, steps + 1] of images with the first k/steps of pixels (by `ranks`, from
  deletion_ranks or random_ranks) set to `fill` [B, C], k = 0..steps.

  score_fn: images [B, H, W, C] -> [B] (e.g. the model's positive-class probability); it
  runs once per step (jax.lax.map: one compiled body). ends: optional ([B], [B]) scores at
  k = 0 and k = steps, the same for every order (nothing / everything deleted), so that
  several curves of one batch compute them once."""
  images = jnp.asarray(images, jnp.float32)
  b, height, width, c = images.shape
  n = height * width
  fill = jnp.asarray(fill, jnp.float32)[:, None, None, :]
  ranks = ranks.reshape(b, height, width, 1)

  def at(k):
    deleted = ranks < jnp.ceil(k * n / steps).astype(jnp.int32)
    return score_fn(jnp.where(deleted, fill, images).astype(images.dtype))

  if ends is None:
    return jnp.moveaxis(jax.lax.map(at, jnp.arange(steps + 1)), 0, 1)
  middle = jnp.moveaxis(jax.lax.map(at, jnp.arange(1, steps)), 0, 1).reshape(b, steps - 1)
  return jnp.concatenate([ends[0][:, None], middle, ends[1][:, None]], axis=1)


def curve_auc(curves):
  """[..., K + 1] scores at deleted fractions k / K -> [...] trapezoid AUC over [0, 1]."""
  curves = jnp.asarray(curves, jnp.float32)
  return (curves[..., 1:] + curves[..., :-1]).sum(-1) / (2 * (curves.shape[-1] - 1))


def map_metrics(maps: dict, evidence, tolerance: int = 0) -> dict:
  """{name: [B, h, w]}, evidence [B, H, W] -> {"<name>/pointing", "<name>/pointing_chance",
  "<name>/energy", "<name>/chance": [B]}."""
  out = {}
  for name, m in maps.items():
    out[f"{name}/pointing"] = pointing_game(m, evidence, tolerance)
    out[f"{name}/pointing_chance"] = pointing_chance(m.shape[1:], evidence, tolerance)
    out[f"{name}/energy"], out[f"{name}/chance"] = energy_share(m, evidence)
  return out


def deletion_metrics(maps: dict, batch: dict, score_fn, *, steps: int = 8, key=None) -> dict:
  """{"<name>/deletion", "random/deletion": [B, steps + 1]} of named maps on one model batch
  (image [B, H, W, 3], masks, has_lesion_mask); the two curve ends are scored once."""
  images = batch["image"]
  shape = images.shape[1:3]
  fill = skin_colour(images, batch["masks"][..., 0], batch["has_lesion_mask"])
  blank = jnp.broadcast_to(fill[:, None, None, :], images.shape).astype(images.dtype)
  ends = (score_fn(images), score_fn(blank))
  key = jax.random.PRNGKey(0) if key is None else key
  orders = {name: deletion_ranks(m, shape) for name, m in maps.items()}
  orders[RANDOM] = random_ranks(key, images.shape[0], shape)
  return {f"{name}/deletion": deletion_curve(score_fn, images, ranks, fill, steps, ends)
          for name, ranks in orders.items()}


def batch_metrics(maps: dict, batch: dict, score_fn=None, *, steps: int = 8,
                  tolerance: int = 0, key=None) -> dict:
  """Per-example faithfulness arrays of named maps on one model batch: map_metrics, plus
  deletion_metrics when score_fn (images -> [B] positive-class score) is given and
  steps > 0. batch: the model batch with evidence_mask [B, H, W]."""
  out = map_metrics(maps, batch["evidence_mask"], tolerance)
  if score_fn is not None and steps > 0 and maps:
    out.update(deletion_metrics(maps, batch, score_fn, steps=steps, key=key))
  return out


def summarize(arrays: dict, keep) -> dict:
  """Host: per-example arrays of batch_metrics over a split, `keep` bool [N] (positive
  images with evidence) -> {name: {pointing_game, pointing_chance, energy_share,
  energy_chance, deletion_auc, deletion_curve}, random: {deletion_auc, deletion_curve},
  num_images}."""
  keep = np.asarray(keep, bool)
  out = {"num_images": int(keep.sum())}
  if not keep.any():
    return out
  names = sorted({k.split("/")[0] for k in arrays})
  for name in names:
    entry = {}
    if f"{name}/pointing" in arrays:
      entry["pointing_game"] = float(np.mean(arrays[f"{name}/pointing"][keep]))
      if f"{name}/pointing_chance" in arrays:
        entry["pointing_chance"] = float(np.mean(arrays[f"{name}/pointing_chance"][keep]))
      entry["energy_share"] = float(np.mean(arrays[f"{name}/energy"][keep]))
      entry["energy_chance"] = float(np.mean(arrays[f"{name}/chance"][keep]))
    if f"{name}/deletion" in arrays:
      curve = np.asarray(arrays[f"{name}/deletion"][keep], np.float64).mean(0)
      entry["deletion_auc"] = float(np.asarray(curve_auc(curve)))
      entry["deletion_curve"] = [float(v) for v in curve]
    out[name] = entry
  return out
