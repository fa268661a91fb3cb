"""Recurrent-segmentation metrics of the gaze model (thesis Sec. 4.1), host-side numpy.

Inputs per image are the S x T matrices between the S ground-truth structures and the T
predicted masks (dermjax.models.gaze.eval_arrays):
  iou       [N, S, T]  IoU of the masks binarised at 0.5
  soft_iou  [N, S, T]  eq. 10 on the mask probabilities
  present   [N, S]     GT structure present (and annotated) in the image
  pred_nonempty [N, T] binarised predicted mask has at least one pixel
  pred_structure [N, T] predicted structure class of each step

Two mAPs (eq. 20 per image, mean over images, then over the IoU thresholds 0.5:0.05:0.95):
  seg_map            the thesis's (Sec. 4.3, "the scores are computed taking as GT the mask
                     of the predicted structure class"): predicted mask t is a hit when the
                     GT of its predicted class c_t is present with IoU >= threshold (each GT
                     hit at most once); every other predicted mask, empty ones included, is a
                     FP, every GT not hit a FN: TP / (T + #GT - TP).
  seg_map_agnostic   class-agnostic: a maximum one-to-one matching of GT and non-empty masks
                     at IoU >= threshold, whatever the predicted class; empty masks ignored.
"""

import numpy as np
import scipy.optimize

THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def _max_matching(hits):
  """Size of a maximum one-to-one matching in a boolean [S', T'] matrix."""
  if hits.size == 0:
    return 0
  rows, cols = scipy.optimize.linear_sum_assignment(-hits.astype(np.float64))
  return int(hits[rows, cols].sum())


def image_precision(iou, present, pred_nonempty, threshold):
  """Eq. 20 for one image: TP / (TP + FP + FN); NaN when there is no GT and no prediction.

  TP = pairs of a maximum one-to-one matching among pairs with IoU >= threshold; FP =
  non-empty predicted masks left unmatched; FN = present GT structures left unmatched.
  """
  iou = np.asarray(iou, np.float64)
  rows, cols = np.asarray(present, bool), np.asarray(pred_nonempty, bool)
  tp = _max_matching(iou[rows][:, cols] >= threshold)
  fp, fn = int(cols.sum()) - tp, int(rows.sum()) - tp
  denom = tp + fp + fn
  return tp / denom if denom else float("nan")


def mean_average_precision(iou, present, pred_nonempty, thresholds=THRESHOLDS):
  """mAP over IoU thresholds: eq. 20 per image, mean over images, then over thresholds.

  Returns (mAP, [precision per threshold]). Images without GT nor prediction are skipped.
  """
  per_threshold = []
  for thr in thresholds:
    p = [image_precision(iou[i], present[i], pred_nonempty[i], thr) for i in range(len(iou))]
    p = np.asarray(p, np.float64)
    per_threshold.append(float(np.nanmean(p)) if np.any(~np.isnan(p)) else float("nan"))
  return float(np.mean(per_threshold)), per_threshold


def class_aware_precision(iou, present, pred_structure, threshold):
  """The thesis's eq. 20 for one image (module doc): TP / (TP + FP + FN) with TP = present
  classes hit by a mask predicted as that class with IoU >= threshold, FP = T - TP, FN =
  #present - TP. iou [S, T], present [S], pred_structure [T]. NaN when no GT is present."""
  iou, present = np.asarray(iou, np.float64), np.asarray(present, bool)
  pred = np.asarray(pred_structure, np.int64)
  if not present.any():
    return float("nan")
  hits = present[pred] & (iou[pred, np.arange(len(pred))] >= threshold)   # [T]
  tp = len(np.unique(pred[hits]))
  return tp / (len(pred) + int(present.sum()) - tp)


def class_aware_map(iou, present, pred_structure, thresholds=THRESHOLDS):
  """The thesis's mAP (module doc): (mAP, [precision per threshold]); images without any
  present GT structure are skipped."""
  per_threshold = []
  for thr in thresholds:
    p = np.asarray([class_aware_precision(iou[i], present[i], pred_structure[i], thr)
                    for i in range(len(iou))], np.float64)
    per_threshold.append(float(np.nanmean(p)) if np.any(~np.isnan(p)) else float("nan"))
  return float(np.mean(per_threshold)), per_threshold


def structure_classification(soft_iou, present, pred_structure, num_structures):
  """Each predicted mask's GT class = the present structure of highest softIoU with it.

  Returns (accuracy, confusion [S, S] counts with rows = GT class, cols = predicted class).
  Images with no present structure are skipped.
  """
  soft_iou = np.where(np.asarray(present, bool)[:, :, None], soft_iou, -np.inf)
  keep = np.any(np.asarray(present, bool), axis=1)
  gt = np.argmax(soft_iou, axis=1)[keep].ravel()            # [N' * T]
  pred = np.asarray(pred_structure)[keep].ravel()
  confusion = np.zeros((num_structures, num_structures), np.int64)
  np.add.at(confusion, (gt, pred), 1)
  accuracy = float(np.mean(gt == pred)) if gt.size else float("nan")
  return accuracy, confusion


def structure_jaccard(iou, present):
  """Per-structure Jaccard: mean over the images containing s of the IoU between GT s and
  the predicted mask matched to it (one-to-one, maximising total IoU; 0 if unmatched).

  Returns [S] float (NaN for a structure never present).
  """
  iou, present = np.asarray(iou, np.float64), np.asarray(present, bool)
  num, s = iou.shape[:2]
  scores = np.zeros((num, s))
  for i in range(num):
    rows = np.flatnonzero(present[i])
    if rows.size:
      r, c = scipy.optimize.linear_sum_assignment(-iou[i][rows])
      scores[i, rows[r]] = iou[i][rows[r], c]
  counts = present.sum(0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(counts > 0, (scores * present).sum(0) / counts, np.nan)


def summary(*, iou, soft_iou, present, pred_nonempty, pred_structure, names):
  """All segmentation metrics as a JSON-friendly dict (floats and lists; NaN when undefined)."""
  iou, present = np.asarray(iou), np.asarray(present, bool)
  m_ap, per_threshold = class_aware_map(iou, present, pred_structure)
  agnostic, agnostic_per_threshold = mean_average_precision(iou, present,
                                                            np.asarray(pred_nonempty, bool))
  accuracy, confusion = structure_classification(soft_iou, present, pred_structure, len(names))
  rows = confusion.sum(1, keepdims=True)
  normalized = np.where(rows > 0, confusion / np.maximum(rows, 1), np.nan)
  jaccard = structure_jaccard(iou, present)
  out = {
      "seg_map": m_ap,
      "seg_precision_per_threshold": per_threshold,
      "seg_map_agnostic": agnostic,
      "seg_precision_per_threshold_agnostic": agnostic_per_threshold,
      "structure_accuracy": accuracy,
      "structure_confusion": confusion.tolist(),
      "structure_confusion_normalized": normalized.tolist(),
      "jaccard_mean": float(np.nanmean(jaccard)) if np.any(~np.isnan(jaccard)) else float("nan"),
  }
  out.update({f"jaccard/{name}": float(j) for name, j in zip(names, jaccard)})
  return out
