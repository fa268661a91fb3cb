"""Thresholds chosen on validation, applied to test: the end of training, dermjax.evaluate
--split=test on a finished run, and dermjax.report's columns (no test number is chosen on
test)."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

import trained_run
from dermjax import evaluate
from dermjax import report
from dermjax.metrics import diagnosis


def _json(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  with trained_run.registered():
    yield trained_run.tiny_run(tmp_path_factory)


def test_training_applies_the_validation_thresholds_to_test(run):
  validation = _json(os.path.join(run, "results", "validation.json"))
  predictions = {s: np.load(os.path.join(run, "predictions", f"{s}.npz"))
                 for s in ("validation", "test")}
  chosen = diagnosis.choose_thresholds(predictions["validation"]["scores"],
                                       predictions["validation"]["labels"])
  assert validation["thresholds"] == pytest.approx(chosen)
  assert diagnosis.AT_VALIDATION not in validation
  test = _json(os.path.join(run, "results", "test.json"))
  assert "thresholds" not in test   # nothing is chosen on test
  scores, labels = predictions["test"]["scores"], predictions["test"]["labels"]
  for rule, threshold in chosen.items():
    assert test[diagnosis.AT_VALIDATION][rule] == pytest.approx(
        diagnosis.at_threshold(scores, labels, threshold))


def test_evaluate_test_alone_uses_the_runs_validation_thresholds(run, tmp_path):
  """--split=test reads the run's results/validation.json: with its thresholds edited, the
  test numbers follow the edited thresholds (they are not chosen again, on test or else)."""
  with trained_run.registered():
    evaluate.evaluate(run, str(tmp_path / "same"), splits=["test"])
  expected = _json(os.path.join(run, "results", "test.json"))[diagnosis.AT_VALIDATION]
  assert _json(tmp_path / "same" / "results" / "test.json")[diagnosis.AT_VALIDATION] == expected

  edited = tmp_path / "edited_run"   # the run, with other validation thresholds
  (edited / "results").mkdir(parents=True)
  os.symlink(os.path.join(run, "checkpoints"), edited / "checkpoints")
  for name in ("config.json", os.path.join("results", "normalization.json")):
    shutil.copy(os.path.join(run, name), edited / name)
  validation = _json(os.path.join(run, "results", "validation.json"))
  validation["thresholds"] = {"youden": 0.0, "sensitivity_80": 1.0}
  with open(edited / "results" / "validation.json", "w") as f:
    json.dump(validation, f)
  with trained_run.registered():
    result = evaluate.evaluate(str(edited), str(tmp_path / "out"), splits=["test"])["test"]
  at = result[diagnosis.AT_VALIDATION]
  assert at["youden"]["sensitivity"] == 1.0 and at["youden"]["specificity"] == 0.0
  assert at["sensitivity_80"]["sensitivity"] == 0.0 and at["sensitivity_80"]["specificity"] == 1.0


def test_report_shows_the_validation_threshold_columns(run, tmp_path):
  report.build_report([run], str(tmp_path), names=["tiny"])
  with open(tmp_path / "report.csv") as f:
    row = next(csv.DictReader(f))
  at = _json(os.path.join(run, "results", "test.json"))[diagnosis.AT_VALIDATION]
  assert float(row["SEN@valJ"]) == pytest.approx(at["youden"]["sensitivity"])
  assert float(row["SPE@valSEN80"]) == pytest.approx(at["sensitivity_80"]["specificity"])
  header = (tmp_path / "report.md").read_text().splitlines()[2]
  assert header.index("SEN@SPE85") < header.index("ACC@valJ") < header.index("mean_attention")
