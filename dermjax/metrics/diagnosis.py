"""Diagnosis metrics as the papers report them (scikit-learn), pure host functions.

Definitions follow the ISIC challenge's official scorer (PyPI isic-challenge-scoring;
tests/test_submission.py checks agreement): a score counts as positive when it is
> 0.5 (strictly), AUC and AP are scikit-learn's, `auc_sens_80` is the challenge's partial
AUC above sensitivity 0.8, balanced accuracy is the mean per-class recall.

Binary (melanoma vs rest): AUC, AP, auc_sens_80, accuracy / sensitivity / specificity /
balanced accuracy at the threshold, and sensitivity at specificity .95 / .90 / .85 (the
papers' tables; not a challenge metric); `choose_thresholds` picks thresholds on one split
(validation: Youden's J, and the highest with sensitivity >= .80) and `at_threshold`
applies one to another split. Multiclass (K > 1): per-class one-vs-rest AUC and their
mean, accuracy and balanced accuracy of the argmax. Rows with label -1 (no diagnosis)
never count. A split where a metric is undefined (one class only) gives NaN and a
warning, never an exception.
"""

import warnings

import numpy as np
from sklearn import metrics as skm

from dermjax import faults

SPECIFICITIES = (0.95, 0.90, 0.85)


def _nan(reason: str) -> float:
  warnings.warn(f"diagnosis metric undefined: {reason}; reporting NaN", RuntimeWarning, stacklevel=3)
  return float("nan")


def _check(scores, labels, ndim):
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(np.int64)
  if scores.ndim != ndim or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
    raise ValueError(f"diagnosis metrics: scores {scores.shape} and labels {labels.shape} must be "
                     f"[N{', K' if ndim == 2 else ''}] and [N]")
  return scores, labels


def sensitivity_at_specificity(scores, labels, specificity: float) -> float:
  """Sensitivity at fixed specificity, as the papers' tables report it: the largest
  true-positive rate among the ROC's operating points (thresholds at the observed scores,
  scikit-learn's roc_curve) whose false-positive rate is <= 1 - `specificity`. No
  interpolation between points. scores, labels: [N]."""
  scores, labels = _check(scores, labels, 1)
  if labels.min(initial=0) == labels.max(initial=0) or len(labels) == 0:
    return _nan(f"sensitivity at specificity {specificity} needs both classes")
  fpr, tpr, _ = skm.roc_curve(labels, scores)
  ok = fpr <= 1.0 - specificity + 1e-12
  return float(tpr[ok].max())


def auc_above_sensitivity(scores, labels, sensitivity: float = 0.8) -> float:
  """The ISIC challenge's `auc_sens_80`: area under the ROC where TPR >= `sensitivity`
  (unnormalised, at most 1 - sensitivity), the curve entering at an interpolated point at
  exactly that TPR. scores, labels: [N] with both classes."""
  scores, labels = _check(scores, labels, 1)
  fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
  i = int(np.searchsorted(tpr, sensitivity, side="left"))
  fpr_at = np.interp(sensitivity, tpr[i - 1:i + 1], fpr[i - 1:i + 1])
  return float(skm.auc(np.insert(fpr[i:], 0, fpr_at), np.insert(tpr[i:], 0, sensitivity)))


def binary_metrics(scores, labels, *, threshold: float = 0.5, prefix: str = "") -> dict:
  """scores [N] (probabilities), labels [N] in {0, 1} -> dict of floats; positive means
  score > threshold (the challenge's rule)."""
  scores, labels = _check(scores, labels, 1)
  if np.any((labels != 0) & (labels != 1)):
    raise ValueError(f"binary diagnosis metrics: labels must be 0/1, got {np.unique(labels)}")
  pos, neg = labels == 1, labels == 0
  pred = scores > threshold
  both = pos.any() and neg.any()
  out = {
      "num_examples": int(len(labels)),
      "num_positive": int(pos.sum()),
      "auc": float(skm.roc_auc_score(labels, scores)) if both else _nan("AUC needs both classes"),
      "ap": float(skm.average_precision_score(labels, scores)) if pos.any() else _nan(
          "AP needs a positive example"),
      "accuracy": float(np.mean(pred == pos)) if len(labels) else _nan("no examples"),
      "sensitivity": float(np.mean(pred[pos])) if pos.any() else _nan(
          "sensitivity needs a positive example"),
      "specificity": float(np.mean(~pred[neg])) if neg.any() else _nan(
          "specificity needs a negative example"),
      "auc_sens_80": auc_above_sensitivity(scores, labels, 0.8) if both else float("nan"),
  }
  # The challenge's aggregate: mean recall over the classes present (benign, malignant).
  recalls = [out[k] for k, present in (("sensitivity", pos.any()), ("specificity", neg.any()))
             if present]
  out["balanced_accuracy"] = float(np.mean(recalls)) if recalls else float("nan")
  for spec in SPECIFICITIES:
    key = f"sensitivity_at_specificity_{round(spec * 100)}"
    out[key] = sensitivity_at_specificity(scores, labels, spec) if both else float("nan")
  return {prefix + k: v for k, v in out.items()}


def _strict_threshold(scores, roc_threshold) -> float:
  """A threshold t with "score > t" positive exactly where "score >= roc_threshold" is
  (roc_curve's rule): the midpoint to the next lower score (just below when none is)."""
  lower = scores[scores < roc_threshold]
  if lower.size == 0:
    return float(np.nextafter(roc_threshold, -np.inf))
  return float((roc_threshold + lower.max()) / 2)


def youden_threshold(scores, labels) -> float:
  """The threshold of the ROC point maximising Youden's J = sensitivity + specificity - 1
  (ties: the higher one), for binary_metrics' rule "positive where score > threshold": the
  midpoint between that point's lowest positive score and the next lower score (the top
  score when no point beats chance: nothing positive). NaN with one class only."""
  scores, labels = _check(scores, labels, 1)
  if labels.min(initial=0) == labels.max(initial=0) or len(labels) == 0:
    return _nan("Youden threshold needs both classes")
  fpr, tpr, thresholds = skm.roc_curve(labels, scores)   # positive where score >= thresholds[i]
  best = int(np.argmax(tpr - fpr))
  if not np.isfinite(thresholds[best]):                 # roc_curve's first point: none positive.
    return float(np.max(scores))
  return _strict_threshold(scores, thresholds[best])


def threshold_at_sensitivity(scores, labels, sensitivity: float = 0.8) -> float:
  """The highest threshold whose sensitivity ("positive where score > threshold") is at
  least `sensitivity` (the fewest false positives at that sensitivity). scores, labels:
  [N]; NaN without a positive example."""
  scores, labels = _check(scores, labels, 1)
  if not np.any(labels == 1):
    return _nan(f"threshold at sensitivity {sensitivity} needs a positive example")
  if not np.any(labels == 0):  # roc_curve needs both classes; every positive score counts
    positives = np.sort(scores[labels == 1])[::-1]
    return _strict_threshold(scores, positives[int(np.ceil(sensitivity * len(positives))) - 1])
  _, tpr, thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
  first = int(np.argmax(tpr >= sensitivity - 1e-12))
  return _strict_threshold(scores, thresholds[first])


# Thresholds chosen on one split (validation) and applied to the others: rule -> chooser.
THRESHOLD_RULES = {"youden": youden_threshold, "sensitivity_80": threshold_at_sensitivity}


def choose_thresholds(scores, labels) -> dict:
  """{rule: threshold} of THRESHOLD_RULES on scores [N] against 0/1 labels [N] (rows with
  label -1 dropped); NaN where a rule is undefined."""
  scores, labels = _check(scores, labels, 1)
  known = labels >= 0
  return {rule: choose(scores[known], labels[known]) for rule, choose in THRESHOLD_RULES.items()}


def at_threshold(scores, labels, threshold: float) -> dict:
  """{threshold, accuracy, sensitivity, specificity, balanced_accuracy} of scores [N]
  against 0/1 labels [N] (rows with label -1 dropped), positive where score > threshold."""
  scores, labels = _check(scores, labels, 1)
  known = labels >= 0
  out = binary_metrics(scores[known], labels[known], threshold=threshold)
  return {"threshold": float(threshold), **{k: out[k] for k in (
      "accuracy", "sensitivity", "specificity", "balanced_accuracy")}}


AT_VALIDATION = "diagnosis_at_validation_threshold"


def threshold_sections(scores, labels, split: str, thresholds: dict | None) -> dict:
  """A split's threshold sections of results/<split>.json from its binary scores [N] and
  0/1 labels [N]: {"thresholds": choose_thresholds} on "validation"; on any other split
  {AT_VALIDATION: {rule: at_threshold at the validation's threshold}} when `thresholds`
  ({rule: value}) are given; else {}."""
  if split == "validation":
    return {"thresholds": choose_thresholds(scores, labels)}
  defined = {rule: float(t) for rule, t in (thresholds or {}).items()
             if t is not None and np.isfinite(t)}   # NaN (JSON null): undefined there
  if not defined:
    return {}
  return {AT_VALIDATION: {rule: at_threshold(scores, labels, t) for rule, t in defined.items()}}


def multiclass_metrics(probs, labels, class_names=None) -> dict:
  """probs [N, K] (softmax), labels [N] in [0, K) -> per-class one-vs-rest AUC, mean, accuracies."""
  probs, labels = _check(probs, labels, 2)
  num_classes = probs.shape[1]
  if np.any((labels < 0) | (labels >= num_classes)):
    raise ValueError(f"multiclass diagnosis metrics: labels must be in [0, {num_classes}), "
                     f"got {np.unique(labels)}")
  names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"multiclass diagnosis metrics: {len(names)} class names for {num_classes} "
                     "classes")
  pred = probs.argmax(axis=1)
  out = {"num_examples": int(len(labels)),
         "accuracy": float(np.mean(pred == labels)) if len(labels) else _nan("no examples")}
  aucs, recalls = [], []
  for k, name in enumerate(names):
    is_k = labels == k
    if is_k.any() and (~is_k).any():
      out[f"auc_{name}"] = float(skm.roc_auc_score(is_k, probs[:, k]))
      aucs.append(out[f"auc_{name}"])
    else:
      out[f"auc_{name}"] = _nan(f"one-vs-rest AUC of class {name!r} needs both classes")
    if is_k.any():
      recalls.append(np.mean(pred[is_k] == k))
  out["mean_auc"] = float(np.mean(aucs)) if aucs else _nan("no class has a defined AUC")
  # Balanced accuracy: mean recall over the classes present in the split (sklearn's definition).
  out["balanced_accuracy"] = float(np.mean(recalls)) if recalls else _nan("no examples")
  return out


def probabilities(logits):
  """logits [N, K] -> sigmoid scores [N] for K == 1, softmax probabilities [N, K] otherwise."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2:
    raise ValueError(f"diagnosis metrics: logits must be [N, K], got {logits.shape}")
  if logits.shape[1] == 1:
    return 1.0 / (1.0 + np.exp(-logits[:, 0]))
  shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
  return shifted / shifted.sum(axis=1, keepdims=True)


class NonFiniteOutputs(faults.RunError):
  """The evaluated model output NaN / inf logits (it diverged): no metric is meaningful."""

  def __init__(self, message):
    super().__init__(message, exit_code=3)


def check_finite(logits):
  """Raises NonFiniteOutputs (one line) if any logit is NaN or infinite (sklearn would fail
  with "Input contains NaN", naming neither the model nor the cause)."""
  logits = np.asarray(logits)
  bad = int(np.sum(~np.isfinite(logits).reshape(len(logits), -1).all(-1))) if logits.size else 0
  if bad:
    raise NonFiniteOutputs(f"evaluation: the model output non-finite logits for {bad} of "
                           f"{len(logits)} examples (it diverged); no diagnosis metric computed")


def diagnosis_metrics(logits, labels, *, melanoma=None, melanoma_class=None, class_names=None,
                      threshold: float = 0.5) -> dict:
  """All diagnosis metrics from model logits.

  logits [N, K]. K == 1: sigmoid scores against `labels` (0/1). K > 1: softmax; multiclass
  metrics against `labels`, plus the binary metrics of the melanoma score (the probability
  of class `melanoma_class`) against `melanoma` (0/1; rows with -1 dropped) when given.
  Rows whose label is -1 (no diagnosis) are left out of every metric.
  """
  check_finite(logits)
  probs = probabilities(logits)
  labels = np.asarray(labels)
  known = labels >= 0       # rows without a label (-1) do not count
  probs, labels = probs[known], labels[known]
  melanoma = None if melanoma is None else np.asarray(melanoma)[known]
  if probs.ndim == 1:
    return binary_metrics(probs, labels, threshold=threshold)
  out = multiclass_metrics(probs, labels, class_names)
  if melanoma_class is not None and melanoma is not None:
    melanoma = np.asarray(melanoma)
    known = melanoma >= 0
    out.update(binary_metrics(probs[known, melanoma_class], melanoma[known], threshold=threshold,
                              prefix="melanoma_"))
  return out
