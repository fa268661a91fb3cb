"""ROC curves: points of one split's scores, and one figure overlaying several runs.

  roc_points(scores, labels) -> {"fpr", "tpr", "thresholds": [P], "auc": float}
  plot_roc_curves(curves, path, title=None)   curves: {run name: roc_points(...)}
"""

import numpy as np
from sklearn import metrics as skm

from dermjax import fileio


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
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
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
