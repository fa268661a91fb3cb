"""ROC curves: points of one split's scores, one run's curve (CSV + PNG, written by the
trainer's final evaluation) and one figure overlaying several runs (dermjax.report).

  roc_points(scores, labels) -> {"fpr", "tpr", "thresholds": [P], "auc": float}
  plot_roc_curves(curves, path, title=None)   curves: {run name: roc_points(...)}
  curve_inputs(logits, labels, melanoma, melanoma_class) -> (scores, 0/1 targets) | None
  write_roc(results_dir, split, logits, labels, melanoma, melanoma_class)
      results_dir/roc_<split>.csv (fpr, tpr, threshold) and roc_<split>.png (MASLL Fig. 3,
      one curve), atomically; the curve the diagnosis metrics score: K = 1: sigmoid(logits)
      against `labels`; K > 1: the softmax probability of `melanoma_class` against
      `melanoma` (rows < 0 dropped). One-class splits and K > 1 models without a melanoma
      class have no curve (nothing written).
"""

import io
import os

import numpy as np
from sklearn import metrics as skm

from dermjax import fileio
from dermjax.metrics import diagnosis


def roc_points(scores, labels) -> dict:
  """scores [N], labels [N] in {0, 1} (both present) -> the ROC (scikit-learn's operating
  points) and its AUC."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(np.int64)
  fpr, tpr, thresholds = skm.roc_curve(labels, scores)
  return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds,
          "auc": float(skm.roc_auc_score(labels, scores))}


def plot_roc_curves(curves: dict, path: str, title: str | None = None, auc_labels=None) -> str:
  """One PNG with a ROC curve per run (MASLL Fig. 3 style): labelled axes, the chance
  diagonal, a legend "name (AUC x.xxx)" (auc_labels {name: text} replaces the AUC text).
  curves: {name: {"fpr", "tpr", "auc"}}. Written atomically; returns path."""
  import matplotlib  # lazy: matplotlib (~1 s to import) is only needed to draw this PNG
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # lazy: as above, and after matplotlib.use
  fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
  for name, curve in curves.items():
    text = (auc_labels or {}).get(name, f"AUC {curve['auc']:.3f}")
    ax.plot(curve["fpr"], curve["tpr"], lw=1.8, label=f"{name} ({text})")
  ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("False positive rate (1 - specificity)")
  ax.set_ylabel("True positive rate (sensitivity)")
  ax.set_title(title or "ROC")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  with fileio.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png")
  plt.close(fig)
  return path


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


def write_roc(results_dir, split, logits, labels, melanoma=None, melanoma_class=None):
  """Writes roc_<split>.csv and roc_<split>.png under results_dir; returns the AUC or None."""
  inputs = curve_inputs(logits, labels, melanoma, melanoma_class)
  if inputs is None or inputs[1].size == 0 or inputs[1].min() == inputs[1].max():
    return None
  points = roc_points(*inputs)
  prefix = os.path.join(results_dir, f"roc_{split}")
  text = io.StringIO()
  np.savetxt(text, np.stack([points["fpr"], points["tpr"], points["thresholds"]], axis=1),
             delimiter=",", header="fpr,tpr,threshold", comments="", fmt="%.8g")
  fileio.write_text(prefix + ".csv", text.getvalue())
  plot_roc_curves({split: points}, prefix + ".png", title=f"ROC, {split} (n={inputs[1].size})")
  return points["auc"]
