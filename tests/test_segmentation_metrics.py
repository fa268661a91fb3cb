"""Segmentation metrics of the gaze model on hand-made S x T matrices."""

import numpy as np
import pytest

from dermjax.models.gaze import segmentation as seg


def test_image_precision_eq20_by_hand():
  # 3 GT structures (rows 0, 1, 3 present), T = 4 predicted masks, mask 3 empty.
  iou = np.array([[0.9, 0.1, 0.0, 0.0],
                  [0.6, 0.7, 0.0, 0.0],
                  [0.0, 0.0, 0.0, 0.0],
                  [0.0, 0.0, 0.55, 0.0]])
  present = np.array([1, 1, 0, 1], bool)
  nonempty = np.array([1, 1, 1, 0], bool)
  # thr .5: TP 3 (0-0, 1-1, 3-2), FP 0, FN 0.
  assert seg.image_precision(iou, present, nonempty, 0.5) == pytest.approx(1.0)
  # thr .6: TP 2 (0-0, 1-1), FP 1 (mask 2), FN 1 (row 3) -> 2 / 4.
  assert seg.image_precision(iou, present, nonempty, 0.6) == pytest.approx(0.5)
  # thr .75: TP 1 (0-0; row 1 only reaches .7), FP 2, FN 2 -> 1 / 5.
  assert seg.image_precision(iou, present, nonempty, 0.75) == pytest.approx(0.2)
  # thr .95: nothing: 0 / (3 + 3).
  assert seg.image_precision(iou, present, nonempty, 0.95) == 0.0


def test_one_to_one_matching_not_greedy():
  # Mask 0 overlaps both GTs; a greedy pairing of row 0 with mask 0 would leave row 1 unmatched.
  iou = np.array([[0.8, 0.6], [0.7, 0.1]])
  p = seg.image_precision(iou, np.ones(2, bool), np.ones(2, bool), 0.5)
  assert p == pytest.approx(1.0)


def test_nothing_to_score_is_nan_and_skipped():
  iou = np.zeros((2, 3, 2))
  present = np.array([[0, 0, 0], [1, 0, 0]], bool)
  nonempty = np.array([[0, 0], [1, 0]], bool)
  iou[1, 0, 0] = 0.72
  assert np.isnan(seg.image_precision(iou[0], present[0], nonempty[0], 0.5))
  m_ap, per = seg.mean_average_precision(iou, present, nonempty)
  assert len(per) == 10 and per[0] == 1.0 and per[5] == 0.0  # thresholds .5 .. .95
  assert m_ap == pytest.approx(0.5)  # .5, .55, .6, .65, .7 hit; .75 .. .95 miss


def test_thresholds():
  np.testing.assert_allclose(seg.THRESHOLDS, [.5, .55, .6, .65, .7, .75, .8, .85, .9, .95])


def test_structure_classification_pairs_each_mask_with_best_soft_iou():
  soft = np.array([[[0.9, 0.2, 0.5],     # GT 0
                    [0.1, 0.7, 0.6],     # GT 1
                    [0.99, 0.99, 0.99]]])  # GT 2 absent: never chosen
  present = np.array([[1, 1, 0]], bool)
  pred = np.array([[0, 1, 0]])           # masks: GT 0, GT 1, GT 1 -> third is wrong
  acc, confusion = seg.structure_classification(soft, present, pred, 3)
  assert acc == pytest.approx(2 / 3)
  np.testing.assert_array_equal(confusion, [[1, 0, 0], [1, 1, 0], [0, 0, 0]])


def test_structure_jaccard_per_structure():
  iou = np.array([[[0.8, 0.0], [0.0, 0.4], [0.0, 0.0]],
                  [[0.6, 0.0], [0.0, 0.0], [0.0, 0.0]]])
  present = np.array([[1, 1, 0], [1, 0, 0]], bool)
  j = seg.structure_jaccard(iou, present)
  np.testing.assert_allclose(j[:2], [0.7, 0.4])
  assert np.isnan(j[2])


def test_summary_keys():
  iou = np.array([[[0.8, 0.0], [0.0, 0.6]]])
  out = seg.summary(iou=iou, soft_iou=iou, present=np.ones((1, 2), bool),
                    pred_nonempty=np.ones((1, 2), bool), pred_structure=np.array([[0, 1]]),
                    names=("a", "b"))
  assert out["structure_accuracy"] == 1.0
  assert out["jaccard/a"] == pytest.approx(0.8) and out["jaccard/b"] == pytest.approx(0.6)
  # .5-.6: TP 2; .65-.8: TP 1, FP 1, FN 1 -> 1/3; .85-.95: 0.
  assert out["seg_map"] == pytest.approx(np.mean([1.0] * 3 + [1 / 3] * 4 + [0.0] * 3))
  assert out["seg_map_agnostic"] == pytest.approx(out["seg_map"])   # classes all right here


def test_class_aware_map_by_hand():
  """The thesis's mAP: lesion and skin present, T = 3. Mask 0 says lesion (IoU .9 with it): a
  hit. Mask 1 says lesion too but covers the skin (IoU .7 with skin): a FP, not a hit, and
  skin stays a FN. Mask 2 is empty (says skin): a FP. -> 1 / (1 + 2 + 1) up to threshold .9,
  0 at .95. The class-agnostic score pairs mask 1 with skin and ignores the empty mask: 1."""
  iou = np.array([[[0.9, 0.0, 0.0],
                   [0.0, 0.7, 0.0],
                   [0.0, 0.0, 0.0]]])
  present = np.array([[1, 1, 0]], bool)
  pred = np.array([[0, 0, 1]])
  nonempty = np.array([[1, 1, 0]], bool)
  assert seg.class_aware_precision(iou[0], present[0], pred[0], 0.5) == pytest.approx(1 / 4)
  assert seg.class_aware_precision(iou[0], present[0], pred[0], 0.95) == 0.0
  m_ap, per = seg.class_aware_map(iou, present, pred)
  assert per == pytest.approx([0.25] * 9 + [0.0])
  assert m_ap == pytest.approx(0.225)
  agnostic = seg.image_precision(iou[0], present[0], nonempty[0], 0.5)
  assert agnostic == pytest.approx(1.0)
  out = seg.summary(iou=iou, soft_iou=iou, present=present, pred_nonempty=nonempty,
                    pred_structure=pred, names=("a", "b", "c"))
  assert out["seg_map"] == pytest.approx(0.225)
  assert out["seg_map_agnostic"] == pytest.approx(np.mean([1.0] * 5 + [1 / 3] * 4 + [0.0]))


def test_class_aware_counts_each_gt_once_and_skips_images_without_gt():
  # Two masks predicted as lesion both overlap it: one hit, one FP; FN 0 -> 1 / (1 + 1).
  iou = np.array([[0.9, 0.8], [0.0, 0.0]])
  assert seg.class_aware_precision(iou, np.array([1, 0], bool), np.array([0, 0]), 0.5) == 0.5
  # A mask predicted as an absent class is a FP even with IoU 0 everywhere.
  assert seg.class_aware_precision(iou, np.array([1, 0], bool), np.array([0, 1]), 0.5) == 0.5
  assert np.isnan(seg.class_aware_precision(iou, np.zeros(2, bool), np.array([0, 1]), 0.5))
  m_ap, _ = seg.class_aware_map(np.stack([iou, iou]), np.array([[1, 0], [0, 0]], bool),
                                np.array([[0, 1], [0, 1]]))
  assert m_ap == pytest.approx(np.mean([0.5] * 9 + [0.0]))
