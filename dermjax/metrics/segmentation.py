"""Lesion segmentation quality as the ISIC challenges score it (pure numpy, host side).

Per image, the Jaccard index J = |pred & gt| / |pred | gt| of two binary masks (1 where both
masks are empty: a perfect match). The ISIC 2017 Part 1 (and ISIC 2018 Task 1) leaderboard
used the *thresholded* Jaccard: each image's J counts as 0 when below 0.65, then the mean
over images. Models compute the per-image pixel counts on device (e.g.
`dermjax.metrics.attention.intersection_union`) and hand the [N] counts here, so no full
masks travel to the host.
"""

import numpy as np

ISIC_THRESHOLD = 0.65


def pixel_counts(pred, target):
  """0/1 masks [N, H, W] (anything > 0.5 is in) -> (intersection [N], union [N]) float64."""
  pred, target = np.asarray(pred) > 0.5, np.asarray(target) > 0.5
  if pred.shape != target.shape:
    raise ValueError(f"pixel_counts: pred {pred.shape} and target {target.shape} differ")
  axes = tuple(range(1, pred.ndim))
  return (np.sum(pred & target, axis=axes).astype(np.float64),
          np.sum(pred | target, axis=axes).astype(np.float64))


def per_image_jaccard(intersection, union):
  """[N] pixel counts -> [N] Jaccard indices (1.0 where the union is empty)."""
  intersection = np.asarray(intersection, np.float64)
  union = np.asarray(union, np.float64)
  return np.where(union > 0, intersection / np.maximum(union, 1e-12), 1.0)


def mean_jaccard(intersection, union) -> float:
  """Mean over images of the per-image Jaccard index (NaN for no images)."""
  j = per_image_jaccard(intersection, union)
  return float(j.mean()) if j.size else float("nan")


def thresholded_jaccard(intersection, union, threshold: float = ISIC_THRESHOLD) -> float:
  """The ISIC challenge score: mean of per-image Jaccard, each set to 0 when below
  `threshold` (0.65). NaN for no images."""
  j = per_image_jaccard(intersection, union)
  return float(np.where(j >= threshold, j, 0.0).mean()) if j.size else float("nan")
