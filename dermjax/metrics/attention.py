"""How well an attention map (or CAM) covers the lesion: AttnMel's Table 3 (Yan et al. 2019).

Each map is re-normalised to [0, 1] (min-max per map), binarised at 0.5 and compared with
the ground-truth lesion mask by the Jaccard index. The functions are pure and work on
jax arrays (inside jit) and numpy arrays (on host) alike; maps are [..., H, W].
"""

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
  """jnp for jax arrays (and tracers), numpy otherwise."""
  return jnp if isinstance(x, jax.Array) else np


def minmax_normalize(maps, *, axis=(-2, -1)):
  """Each map rescaled to [0, 1] over `axis`; a constant map becomes all zeros."""
  xp = _xp(maps)
  lo = xp.min(maps, axis=axis, keepdims=True)
  hi = xp.max(maps, axis=axis, keepdims=True)
  span = hi - lo
  return xp.where(span > 0, (maps - lo) / xp.where(span > 0, span, 1), 0).astype(maps.dtype)


def binarize(maps, *, threshold: float = 0.5, axis=(-2, -1)):
  """min-max normalised map >= threshold, as float32 0/1 (same shape as `maps`)."""
  xp = _xp(maps)
  return (minmax_normalize(maps, axis=axis) >= threshold).astype(xp.float32)


def intersection_union(pred, target, *, axis=(-2, -1)):
  """Pixel counts (|pred & target|, |pred | target|) of 0/1 masks, reduced over `axis`."""
  xp = _xp(pred)
  pred, target = pred > 0.5, target > 0.5
  inter = xp.sum(pred & target, axis=axis).astype(xp.float32)
  union = xp.sum(pred | target, axis=axis).astype(xp.float32)
  return inter, union


def jaccard(pred, target, *, axis=(-2, -1), empty: float = 1.0):
  """Jaccard index of 0/1 masks over `axis`; `empty` where both masks are empty."""
  xp = _xp(pred)
  inter, union = intersection_union(pred, target, axis=axis)
  return xp.where(union > 0, inter / xp.maximum(union, 1), xp.float32(empty))


def upsample(maps, size):
  """Bilinear resize (half-pixel centres, as torch's align_corners=False) of [B, h, w] to [B, *size]."""
  maps = jnp.asarray(maps, jnp.float32)
  return jax.image.resize(maps, maps.shape[:-2] + tuple(size), method="bilinear")


def map_jaccard_arrays(maps: dict, lesion_mask, has_lesion_mask) -> dict:
  """Per-example Table-3 arrays for each named map, computed on device.

  maps: {name: [B, h, w]} attention maps / CAMs at their own resolution. lesion_mask:
  [B, H, W] 0/1; has_lesion_mask: [B] (0 where the mask is not ground truth).
  Each map is upsampled to H x W, binarised (`binarize`) and compared with the mask.
  Returns {"has_lesion_mask": [B], and per name "jaccard_<name>", "intersection_<name>",
  "union_<name>": [B] float32}.
  """
  size = lesion_mask.shape[-2:]
  out = {"has_lesion_mask": jnp.asarray(has_lesion_mask, jnp.float32)}
  for name, heat in maps.items():
    pred = binarize(upsample(heat, size))
    inter, union = intersection_union(pred, lesion_mask)
    out[f"jaccard_{name}"] = jaccard(pred, lesion_mask)
    out[f"intersection_{name}"] = inter
    out[f"union_{name}"] = union
  return out


def jaccard_report(arrays: dict) -> dict:
  """Host-side Table 3 from gathered `map_jaccard_arrays` outputs (numpy, one row per example).

  Only examples with a ground-truth lesion mask count. Per map: "jaccard/<name>" (mean of the
  per-image indices, as the paper) and "jaccard_pooled/<name>" (split intersection over split
  union); plus "jaccard/num_examples". Maps are NaN when no example has a mask; {} when
  the model produced no maps (no "has_lesion_mask" array).
  """
  if "has_lesion_mask" not in arrays:
    return {}
  keep = np.asarray(arrays["has_lesion_mask"]) > 0.5
  report = {"jaccard/num_examples": int(keep.sum())}
  names = sorted(k[len("jaccard_"):] for k in arrays if k.startswith("jaccard_"))
  for name in names:
    per_image = np.asarray(arrays[f"jaccard_{name}"], np.float64)[keep]
    union = float(np.sum(np.asarray(arrays[f"union_{name}"], np.float64)[keep]))
    inter = float(np.sum(np.asarray(arrays[f"intersection_{name}"], np.float64)[keep]))
    report[f"jaccard/{name}"] = float(per_image.mean()) if keep.any() else float("nan")
    if not keep.any():
      report[f"jaccard_pooled/{name}"] = float("nan")
    else:  # All masks and maps empty: a perfect match, as per image.
      report[f"jaccard_pooled/{name}"] = inter / union if union > 0 else 1.0
  return report
