"""dermjax.metrics.roc.write_roc: the curve vs sklearn, which score it plots, its files,
one-class splits."""

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from dermjax.metrics import roc


def test_binary_curve_csv_png_and_auc(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 50)
  logits = (rng.normal(size=50) + 1.5 * labels)[:, None]
  labels[3] = -1                                        # unknown label: left out.
  auc = roc.write_roc(str(tmp_path), "test", logits, labels)
  keep = labels >= 0
  scores = 1 / (1 + np.exp(-logits[keep, 0]))
  assert auc == pytest.approx(skm.roc_auc_score(labels[keep], scores))
  table = np.genfromtxt(tmp_path / "roc_test.csv", delimiter=",", names=True)
  fpr, tpr, _ = skm.roc_curve(labels[keep], scores)
  np.testing.assert_allclose(table["fpr"], fpr, atol=1e-7)
  np.testing.assert_allclose(table["tpr"], tpr, atol=1e-7)
  image = np.asarray(Image.open(tmp_path / "roc_test.png"))
  assert image.ndim == 3 and min(image.shape[:2]) > 200


def test_multiclass_uses_the_melanoma_probability_against_melanoma():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(40, 3))
  melanoma = rng.integers(0, 2, 40)
  logits[:, 2] += 2 * melanoma
  labels = rng.integers(0, 3, 40)
  scores, targets = roc.curve_inputs(logits, labels, melanoma, melanoma_class=2)
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(scores, probs[:, 2])
  np.testing.assert_array_equal(targets, melanoma)
  assert roc.curve_inputs(logits, labels, melanoma, melanoma_class=None) is None


def test_one_class_split_writes_nothing(tmp_path):
  assert roc.write_roc(str(tmp_path), "validation", np.zeros((5, 1)), np.ones(5, int)) is None
  assert not list(tmp_path.iterdir())
