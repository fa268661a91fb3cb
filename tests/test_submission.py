"""Submission files against the official ISIC scorer (PyPI isic-challenge-scoring, a test-only
dependency): the files are accepted, and its numbers equal dermjax.metrics.diagnosis's."""

import csv
import io
import os

import numpy as np
import pytest

import trained_run
from dermjax import config_lib
from dermjax import submission
from dermjax.metrics import diagnosis

scoring = pytest.importorskip("isic_challenge_scoring")


def _score(truth_text, prediction_path, metric="auc"):
  with open(prediction_path) as f:
    return scoring.ClassificationScore.from_stream(io.StringIO(truth_text), f,
                                                   scoring.ClassificationMetric(metric))


def _truth(ids, table):
  return submission.csv_text(ids, {k: np.asarray(v, np.float64) for k, v in table.items()})


def _assert_binary_agrees(ours, theirs):
  for key in ("auc", "ap", "accuracy", "sensitivity", "specificity", "auc_sens_80"):
    assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_binary_metrics_equal_the_scorers(tmp_path):
  rng = np.random.default_rng(0)
  labels = (rng.random(60) < 0.3).astype(int)
  scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
  scores[:4] = 0.5          # the threshold itself: negative for both
  scores[4:8] = scores[8]   # ties
  ids = [f"ISIC_{i:07d}" for i in range(60)]
  path = _write(tmp_path / "s.csv", ids, {"malignant": scores})
  score = _score(_truth(ids, {"malignant": labels}), path)
  _assert_binary_agrees(diagnosis.binary_metrics(scores, labels),
                        score.per_category.loc["malignant"])
  # Balanced accuracy as the challenge aggregates it, on a two-column (benign, malignant)
  # file; rows at exactly 0.5 left out (the scorer calls a 0.5 / 0.5 row undecided).
  keep = scores != 0.5
  kept_ids = [i for i, k in zip(ids, keep) if k]
  score = _score(_truth(kept_ids, {"benign": 1 - labels[keep], "malignant": labels[keep]}),
                 _write(tmp_path / "two.csv", kept_ids,
                        {"benign": 1 - scores[keep], "malignant": scores[keep]}))
  ours = diagnosis.binary_metrics(scores[keep], labels[keep])
  assert ours["balanced_accuracy"] == pytest.approx(score.aggregate["balanced_accuracy"])


def _write(path, ids, table):
  path.write_text(submission.csv_text(ids, table))
  return str(path)


def test_isic2016_submission_has_no_header_and_reads_as_the_2016_scorer_reads_it(tmp_path):
  """ISIC 2016 Part 3 "Test Results": two columns (image id, malignancy confidence), no
  header row. The 2016 scorer (ImageMarkup's scoreP3 of 2016) reads rows with fixed field
  names ['image', 'confidence'] and fails on a value that is not a float in [0, 1], so a
  header row would fail it; the modern scorer needs the header the other years have."""
  ids = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
  scores = np.array([0.25, 0.5, 1.5])
  path = submission.write(str(tmp_path / "s.csv"), "isic2016", ids, scores,
                          ("benign", "malignant"))
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f, fieldnames=["image", "confidence"]))
  assert [r["image"] for r in rows] == ids and all(None not in r for r in rows)
  assert [float(r["confidence"]) for r in rows] == [0.25, 0.5, 1.0]   # clipped to [0, 1]
  assert all(len(r) == 2 for r in rows)
  with open(path) as f:
    assert not f.readline().startswith("image,")
  with open(submission.write(str(tmp_path / "t.csv"), "isic2017", ids[:1], np.array([0.5]),
                             ("other", "melanoma"))) as f:
    assert f.readline().startswith("image,melanoma")   # the other years keep the header


def test_multiclass_metrics_equal_the_scorers(tmp_path):
  rng = np.random.default_rng(1)
  names = submission.FORMATS["isic2018"]
  labels = np.concatenate([np.arange(7), rng.integers(0, 7, 50)])
  logits = rng.normal(size=(57, 7)) + 2.0 * np.eye(7)[labels]
  probs = diagnosis.probabilities(logits)
  ids = [f"ISIC_{i:07d}" for i in range(57)]
  path = submission.write(str(tmp_path / "s.csv"), "isic2018", ids, probs, names)
  score = _score(_truth(ids, {n: labels == k for k, n in enumerate(names)}), path)
  ours = diagnosis.multiclass_metrics(probs, labels, names)
  assert ours["balanced_accuracy"] == pytest.approx(score.aggregate["balanced_accuracy"])
  for k, name in enumerate(names):
    assert ours[f"auc_{name}"] == pytest.approx(score.per_category.loc[name, "auc"])
  assert ours["mean_auc"] == pytest.approx(score.macro_average["auc"])


def test_format_columns_and_validation(tmp_path):
  ids = ["a", "b"]
  probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]])
  names = ("nevus", "melanoma", "seborrheic_keratosis")
  text = open(submission.write(str(tmp_path / "x.csv"), "isic2017", ids, probs, names)).read()
  rows = list(csv.reader(io.StringIO(text)))
  assert rows[0] == ["image", "melanoma", "seborrheic_keratosis"]
  assert rows[1] == ["a", "0.7", "0.1"] and rows[2] == ["b", "0.25", "0.25"]
  assert submission.format_for("auto", "isic2018_task3") == "isic2018"
  assert submission.format_for("auto", "isic2020") is None
  with pytest.raises(ValueError, match="unknown submission format"):
    submission.format_for("isic2099")
  with pytest.raises(ValueError, match="none of the isic2018 columns"):
    submission.columns("isic2018", {"seborrheic_keratosis": np.zeros(2)})


def test_predicted_submission_is_accepted_and_scores_as_the_run(tmp_path_factory, tmp_path):
  """predict --format=isic2017 on the run's test images: the scorer accepts the file and
  its melanoma numbers equal the run's results/test.json."""
  import json  # pylint: disable=g-import-not-at-top
  from dermjax import predict  # pylint: disable=g-import-not-at-top
  with trained_run.registered():
    run = trained_run.tiny_run(tmp_path_factory)
    config = config_lib.load_run_config(run)
    raw = config.data.synthetic_dir
    predict.predict(run, [os.path.join(raw, "ISIC-2017_Test_v2_Data")], str(tmp_path),
                    fmt="auto", explain=False)
  with open(os.path.join(raw, "ISIC-2017_Test_v2_Part3_GroundTruth.csv")) as f:
    truth = f.read().replace("image_id", "image", 1)
  score = _score(truth, tmp_path / "submission_isic2017.csv")
  with open(os.path.join(run, "results", "test.json")) as f:
    ours = json.load(f)["diagnosis"]
  theirs = score.per_category.loc["melanoma"]
  for key in ("auc", "ap", "accuracy", "sensitivity", "specificity"):
    assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
  if ours["auc_sens_80"] is not None:
    assert ours["auc_sens_80"] == pytest.approx(theirs["auc_sens_80"], abs=1e-6)
