"""Diagnosis metrics against hand-computed values."""

import math

import numpy as np
import pytest

from dermjax.metrics import diagnosis


def test_binary_hand_computed():
  # Positives 0.9, 0.6, 0.4; negatives 0.7, 0.3, 0.2, 0.1.
  scores = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1])
  labels = np.array([1, 1, 1, 0, 0, 0, 0])
  m = diagnosis.binary_metrics(scores, labels)
  # Pairs (pos > neg): 0.9 beats 4, 0.6 beats 3, 0.4 beats 3 -> 10 / 12.
  assert m["auc"] == pytest.approx(10 / 12)
  # Ranking: 0.9(+) 0.7(-) 0.6(+) 0.4(+): precisions at the positives 1, 2/3, 3/4.
  assert m["ap"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
  # At 0.5: predicted positive 0.9, 0.6, 0.7 -> TP 2, FP 1, TN 3, FN 1.
  assert m["accuracy"] == pytest.approx(5 / 7)
  assert m["sensitivity"] == pytest.approx(2 / 3)
  assert m["specificity"] == pytest.approx(3 / 4)
  # Specificity >= .95 / .90 / .85 allows no false positive: threshold above 0.7 -> TPR 1/3.
  for key in ("95", "90", "85"):
    assert m[f"sensitivity_at_specificity_{key}"] == pytest.approx(1 / 3)
  assert m["num_examples"] == 7 and m["num_positive"] == 3


def test_sensitivity_at_specificity_allows_false_positives():
  # 20 negatives, 0.96 ... 0.01 step; positives at 0.5 and 0.97.
  neg = np.linspace(0.01, 0.96, 20)
  scores = np.concatenate([neg, [0.5, 0.97]])
  labels = np.concatenate([np.zeros(20), [1, 1]])
  # Specificity .95 allows 1 false positive of 20: threshold 0.96 -> TPR 1/2.
  assert diagnosis.sensitivity_at_specificity(scores, labels, 0.95) == pytest.approx(0.5)
  # .85 allows 3 false positives: threshold at the 3rd highest negative (0.86) -> still 1/2.
  assert diagnosis.sensitivity_at_specificity(scores, labels, 0.85) == pytest.approx(0.5)
  # Negatives 0.01, 0.06, ..., 0.96: 10 lie above the positive at 0.5.
  # .55 allows 9 false positives: the positive at 0.5 is not reached -> TPR 1/2.
  assert diagnosis.sensitivity_at_specificity(scores, labels, 0.55) == pytest.approx(0.5)
  # .5 allows 10 -> both positives.
  assert diagnosis.sensitivity_at_specificity(scores, labels, 0.5) == pytest.approx(1.0)


def test_one_class_gives_nan_and_warning():
  with pytest.warns(RuntimeWarning, match="undefined"):
    m = diagnosis.binary_metrics(np.array([0.2, 0.8]), np.array([0, 0]))
  assert math.isnan(m["auc"]) and math.isnan(m["ap"]) and math.isnan(m["sensitivity"])
  assert math.isnan(m["sensitivity_at_specificity_95"])
  assert m["specificity"] == pytest.approx(0.5)


def test_multiclass_hand_computed():
  probs = np.array([[0.7, 0.2, 0.1],
                    [0.2, 0.5, 0.3],
                    [0.1, 0.3, 0.6],
                    [0.4, 0.5, 0.1]])
  labels = np.array([0, 1, 2, 0])
  m = diagnosis.multiclass_metrics(probs, labels, ["nevus", "melanoma", "sk"])
  assert m["accuracy"] == pytest.approx(3 / 4)
  assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)
  # Class 0 positives 0.7, 0.4 vs negatives 0.2, 0.1 -> 1. Class 1: 0.5 vs 0.2, 0.3, 0.5 -> 2.5/3.
  assert m["auc_nevus"] == pytest.approx(1.0)
  assert m["auc_melanoma"] == pytest.approx(2.5 / 3)
  assert m["auc_sk"] == pytest.approx(1.0)
  assert m["mean_auc"] == pytest.approx((1 + 2.5 / 3 + 1) / 3)


def test_diagnosis_metrics_from_logits():
  logits = np.log(np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.5, 0.1]]))
  labels = np.array([0, 1, 2, 0])
  m = diagnosis.diagnosis_metrics(logits, labels, melanoma=(labels == 1).astype(int),
                                  melanoma_class=1)
  assert m["melanoma_auc"] == pytest.approx(m["auc_1"])
  binary = diagnosis.diagnosis_metrics(np.array([[2.0], [-1.0], [0.5]]), np.array([1, 0, 0]))
  assert binary["auc"] == pytest.approx(1.0)
  assert binary["accuracy"] == pytest.approx(2 / 3)  # sigmoid(0.5) > 0.5 is a false positive.


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="must be"):
    diagnosis.binary_metrics(np.zeros((3, 2)), np.zeros(3))
  with pytest.raises(ValueError, match="0/1"):
    diagnosis.binary_metrics(np.zeros(3), np.array([0, 1, 2]))


def test_score_of_exactly_one_half_is_negative_and_balanced_accuracy():
  # The ISIC challenge counts a score as positive when it is > 0.5.
  m = diagnosis.binary_metrics(np.array([0.5, 0.9, 0.5, 0.1]), np.array([1, 1, 0, 0]))
  assert m["sensitivity"] == pytest.approx(1 / 2) and m["specificity"] == pytest.approx(1.0)
  assert m["balanced_accuracy"] == pytest.approx(3 / 4)


def test_auc_above_sensitivity_hand_computed():
  # Positives 0.9, 0.6, 0.4; negatives 0.7, 0.3, 0.2, 0.1. ROC points (FPR, TPR):
  # (0,0) (0,1/3) (1/4,1/3) (1/4,2/3) (1/4,1) (2/4,1) ... (1,1). TPR 0.8 is reached at FPR 1/4,
  # so the area above TPR 0.8 is the rectangle FPR 1/4..1, TPR 0.8..1 (measured from 0 up):
  # integral of TPR over FPR in [1/4, 1] = 3/4 * 1.
  scores = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1])
  labels = np.array([1, 1, 1, 0, 0, 0, 0])
  assert diagnosis.auc_above_sensitivity(scores, labels, 0.8) == pytest.approx(3 / 4)
  # A perfect ranking: the whole FPR range at TPR 1 -> 1.
  assert diagnosis.auc_above_sensitivity(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0


def test_youden_threshold_hand_computed_and_brute_force():
  # Same scores as test_binary_hand_computed: J with the cut just below 0.9: 1/3, 0.7: 1/3 - 1/4,
  # 0.6: 2/3 - 1/4, 0.4: 1 - 1/4 = 3/4 (best), 0.3: 1 - 2/4 ... Positive is score > threshold,
  # so the threshold is the midpoint between 0.4 and the next lower score, 0.3.
  scores = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1])
  labels = np.array([1, 1, 1, 0, 0, 0, 0])
  assert diagnosis.youden_threshold(scores, labels) == pytest.approx(0.35)
  at = diagnosis.at_threshold(scores, labels, 0.35)
  assert at == pytest.approx({"threshold": 0.35, "accuracy": 6 / 7, "sensitivity": 1.0,
                              "specificity": 0.75, "balanced_accuracy": 0.875})
  rng = np.random.default_rng(0)
  labels = (rng.random(300) < 0.1).astype(int)
  scores = rng.random(300) + 0.3 * labels
  j = lambda t: np.mean(scores[labels == 1] > t) - np.mean(scores[labels == 0] > t)
  best = max(j(t) for t in np.concatenate([[-1.0], np.unique(scores)]))
  found = diagnosis.at_threshold(scores, labels, diagnosis.youden_threshold(scores, labels))
  assert found["sensitivity"] + found["specificity"] - 1 == pytest.approx(best)
  with pytest.warns(RuntimeWarning):
    assert math.isnan(diagnosis.youden_threshold(scores, np.zeros(300)))
  # Every operating point is worse than chance: the top score, so nothing is positive.
  worse = diagnosis.youden_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0]))
  assert worse == 0.9
  assert diagnosis.at_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0]), worse)[
      "specificity"] == 1.0


def test_threshold_at_sensitivity_hand_computed_and_brute_force():
  """The highest threshold with sensitivity >= .80: with 3 positives (.9, .6, .4) that is
  all three, so the cut lies between .4 and the next lower score .3."""
  scores = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1])
  labels = np.array([1, 1, 1, 0, 0, 0, 0])
  assert diagnosis.threshold_at_sensitivity(scores, labels, 0.8) == pytest.approx(0.35)
  assert diagnosis.threshold_at_sensitivity(scores, labels, 0.6) == pytest.approx(0.5)
  rng = np.random.default_rng(1)
  labels = (rng.random(200) < 0.2).astype(int)
  scores = rng.random(200) + 0.3 * labels
  t = diagnosis.threshold_at_sensitivity(scores, labels, 0.8)
  sens = lambda t: np.mean(scores[labels == 1] > t)
  assert sens(t) >= 0.8
  higher = np.unique(scores[scores > t])
  assert sens(higher.min()) < 0.8        # the next score up loses sensitivity .80
  assert diagnosis.choose_thresholds(scores, labels) == pytest.approx(
      {"youden": diagnosis.youden_threshold(scores, labels), "sensitivity_80": t})


def test_threshold_sections_apply_the_validation_threshold_to_test():
  """validation chooses, test only applies: test's numbers are those at validation's cut,
  not at test's own best cut."""
  val_scores = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1])
  val_labels = np.array([1, 1, 1, 0, 0, 0, 0])
  chosen = diagnosis.threshold_sections(val_scores, val_labels, "validation", None)
  assert chosen == {"thresholds": pytest.approx({"youden": 0.35, "sensitivity_80": 0.35})}
  test_scores, test_labels = np.array([0.8, 0.3, 0.2, 0.1]), np.array([1, 1, 0, 0])
  section = diagnosis.threshold_sections(test_scores, test_labels, "test",
                                         {**chosen["thresholds"], "sensitivity_80": None})
  assert list(section) == [diagnosis.AT_VALIDATION]
  assert section[diagnosis.AT_VALIDATION] == {"youden": pytest.approx(
      {"threshold": 0.35, "accuracy": 0.75, "sensitivity": 0.5, "specificity": 1.0,
       "balanced_accuracy": 0.75})}   # test's own Youden cut (0.25) would give 1.0 each
  assert diagnosis.threshold_sections(test_scores, test_labels, "test", None) == {}


def test_rows_without_a_label_do_not_count():
  """label -1 (no diagnosis, e.g. ISIC 2018 Task 1-2 images) is left out of every metric."""
  logits = np.array([[2.0], [-1.0], [0.5], [3.0], [-2.0]])
  labels = np.array([1, 0, 1, -1, 0])
  keep = labels >= 0
  with_unlabelled = diagnosis.diagnosis_metrics(logits, labels)
  assert with_unlabelled == pytest.approx(diagnosis.diagnosis_metrics(logits[keep], labels[keep]))
  assert with_unlabelled["num_examples"] == 4
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
  labels, melanoma = np.array([0, 1, 2, -1]), np.array([1, 0, 0, -1])
  multi = diagnosis.diagnosis_metrics(np.log(probs), labels, melanoma=melanoma, melanoma_class=0)
  assert multi == pytest.approx(diagnosis.diagnosis_metrics(
      np.log(probs[:3]), labels[:3], melanoma=melanoma[:3], melanoma_class=0))
  assert diagnosis.at_threshold(np.array([0.9, 0.1, 0.5]), np.array([1, 0, -1]), 0.5)[
      "accuracy"] == 1.0
