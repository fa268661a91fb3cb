"""ROC curve of one run's melanoma (or binary target) score: CSV + PNG (MASLL Fig. 3, one curve).

`write_roc(results_dir, split, logits, labels, ...)` writes, atomically (dermjax.fileio),
results_dir/roc_<split>.csv (columns fpr, tpr, threshold; sklearn's roc_curve with every
threshold kept) and roc_<split>.png (drawn with PIL, no plotting library needed). The curve
is the one the diagnosis metrics score: K = 1: sigmoid(logits) against `labels`; K > 1: the softmax
probability of `melanoma_class` against `melanoma` (rows < 0 dropped). A split with one
class only, or a K > 1 model without a melanoma class, has no curve (nothing written).
The cross-run overlay of several curves is the experiment report's job.
"""

import io
import os

import numpy as np
from PIL import Image, ImageDraw
from sklearn import metrics as skm

from dermjax import fileio
from dermjax.metrics import diagnosis


def curve_inputs(logits, labels, melanoma=None, melanoma_class=None):
  """(scores [N], 0/1 targets [N]) of the binary score, or None (see the module docstring)."""
  probs = diagnosis.probabilities(logits)
  if probs.ndim == 1:
    targets = np.asarray(labels)
    keep = targets >= 0
    return probs[keep], targets[keep]
  if melanoma is None or melanoma_class is None or not 0 <= melanoma_class < probs.shape[1]:
    return None
  targets = np.asarray(melanoma)
  keep = targets >= 0
  return probs[keep, melanoma_class], targets[keep]


def roc_points(scores, targets):
  """(fpr, tpr, thresholds) from sklearn, or None when `targets` hold one class only."""
  targets = np.asarray(targets).astype(np.int64)
  if targets.size == 0 or targets.min() == targets.max():
    return None
  return skm.roc_curve(targets, np.asarray(scores, np.float64), drop_intermediate=False)


def plot(fpr, tpr, *, title: str = "", size: int = 400):
  """uint8 [size, size, 3]: the ROC curve on unit axes with a chance diagonal and 0.2 ticks."""
  img = Image.new("RGB", (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  left, top, right, bottom = 44, 24, size - 12, size - 36
  to_xy = lambda x, y: (left + x * (right - left), bottom - y * (bottom - top))
  for t in np.linspace(0, 1, 6):
    draw.line([to_xy(t, 0), to_xy(t, 1)], fill=(230, 230, 230))
    draw.line([to_xy(0, t), to_xy(1, t)], fill=(230, 230, 230))
    x, y = to_xy(t, 0)
    draw.text((x - 8, y + 4), f"{t:.1f}", fill=(0, 0, 0))
    x, y = to_xy(0, t)
    draw.text((x - 26, y - 6), f"{t:.1f}", fill=(0, 0, 0))
  draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
  draw.line([to_xy(0, 0), to_xy(1, 1)], fill=(160, 160, 160))
  draw.line([to_xy(x, y) for x, y in zip(fpr, tpr)], fill=(200, 30, 30), width=2)
  draw.text((left + (right - left) // 2 - 60, size - 18), "1 - specificity (FPR)", fill=(0, 0, 0))
  draw.text((4, 4), f"sensitivity (TPR)   {title}", fill=(0, 0, 0))
  return np.asarray(img)


def write_roc(results_dir, split, logits, labels, melanoma=None, melanoma_class=None):
  """Writes roc_<split>.csv and roc_<split>.png under results_dir; returns the AUC or None."""
  inputs = curve_inputs(logits, labels, melanoma, melanoma_class)
  points = None if inputs is None else roc_points(*inputs)
  if points is None:
    return None
  fpr, tpr, thresholds = points
  auc = float(skm.auc(fpr, tpr))
  prefix = os.path.join(results_dir, f"roc_{split}")
  text = io.StringIO()
  np.savetxt(text, np.stack([fpr, tpr, thresholds], axis=1), delimiter=",",
             header="fpr,tpr,threshold", comments="", fmt="%.8g")
  fileio.write_text(prefix + ".csv", text.getvalue())
  image = plot(fpr, tpr, title=f"{split}: AUC {auc:.4f}, n={len(inputs[1])}")
  with fileio.atomic_path(prefix + ".png") as tmp:
    Image.fromarray(image).save(tmp, format="PNG")
  return auc
