"""Structure-loss balancing of the gaze model (thesis Sec. 3.2, eqs. 15-16, Table 2).

Host-side weights from the training split's structure presences P_s (number of images in
which structure s appears), and the device-side mini-batch balancing. The thesis's Table 2
labels its rows the other way round from the equation numbers: eq. 15 (divided by S - 1 so
the weights sum to 1) gives the row 0.133 0.133 0.162 ..., eq. 16 the row 0.025 0.025 ....

Reduction over the matched (structure, step) pairs of a batch (`balanced_mean`):
  presence_others / presence_inverse / none:  sum_pairs(w_s * l) / #pairs  (the thesis:
      each structure's loss multiplied by its weight, then the mean over the pairs)
  batch:  sum_pairs(l / n_s) / #structures in the batch, n_s = pairs of structure s (the
      mean over structures of their per-structure means; the thesis code exactly).
"""

import jax.numpy as jnp
import numpy as np

MODES = ("none", "presence_others", "presence_inverse", "batch")


def _presence(presence):
  p = np.asarray(presence, np.float64)
  if p.ndim != 1 or p.size < 2:
    raise ValueError(f"structure presences must be a list of S >= 2 counts, got {presence!r}")
  return p


def presence_others_weights(presence):
  """Eq. 15: w_i = sum_{s != i} P_s / sum_s P_s, divided by S - 1 so the weights sum to 1."""
  p = _presence(presence)
  if p.sum() <= 0:
    raise ValueError(f"structure presences sum to 0: {presence!r}")
  return (p.sum() - p) / p.sum() / (p.size - 1)


def presence_inverse_weights(presence):
  """Eq. 16: w'_i = 1 / (P_i * sum_s 1 / P_s) (sums to 1). A structure never present gets 0."""
  p = _presence(presence)
  if not np.any(p > 0):
    raise ValueError(f"structure presences are all 0: {presence!r}")
  inv = np.where(p > 0, 1.0 / np.maximum(p, 1e-12), 0.0)
  return inv / inv.sum()


def structure_weights(presence, mode: str):
  """[S] float32 per-structure weights for `mode` (config.loss.balancing); ones for none/batch."""
  if mode == "presence_others":
    return presence_others_weights(presence).astype(np.float32)
  if mode == "presence_inverse":
    return presence_inverse_weights(presence).astype(np.float32)
  if mode in ("none", "batch"):
    return np.ones(len(_presence(presence)), np.float32)
  raise ValueError(f"config.loss.balancing must be one of {MODES}, got {mode!r}")


def pair_weights(matched, class_weights, mode: str, example_weights=None):
  """Weights of the matched (structure, step) pairs of a batch.

  matched: [B, S] bool (GT structure s of example b has a matched mask); class_weights: [S];
  example_weights: optional [B] (e.g. `valid`). Returns [B, S] float32, zero where unmatched.
  "batch": each pair gets 1 / (times its structure is matched in the batch), so that
  sum(w * term) / sum(w) averages per-structure means over the structures in the batch.
  """
  w = matched.astype(jnp.float32)
  if example_weights is not None:
    w = w * example_weights.astype(jnp.float32)[:, None]
  if mode == "batch":
    counts = jnp.sum(w, axis=0, keepdims=True)
    return jnp.where(w > 0, w / jnp.maximum(counts, 1e-12), 0.0)
  if mode not in MODES:
    raise ValueError(f"config.loss.balancing must be one of {MODES}, got {mode!r}")
  return w * jnp.asarray(class_weights, jnp.float32)[None, :]


def balanced_mean(terms, matched, class_weights, mode: str, example_weights=None):
  """Scalar mean of per-pair losses terms [B, S] over the matched pairs matched [B, S] (see
  the module doc for each mode); 0 when nothing is matched."""
  w = pair_weights(matched, class_weights, mode, example_weights)
  if mode == "batch":
    denom = jnp.sum(w)
  else:
    pairs = matched.astype(jnp.float32)
    if example_weights is not None:
      pairs = pairs * example_weights.astype(jnp.float32)[:, None]
    denom = jnp.sum(pairs)
  return jnp.sum(w * terms) / jnp.maximum(denom, 1e-12)
