"""dermjax.report over two runs and a cross-validation folder; the ROC helpers."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import trained_run
from dermjax import report
from dermjax.metrics import roc


def test_report_over_two_runs_and_a_cv(tmp_path_factory, tmp_path):
  with trained_run.registered():
    runs = [trained_run.tiny_run(tmp_path_factory, seed) for seed in (0, 1)]
  # A cross-validation folder: its summary.json over "folds" that are these two runs.
  cv_dir = tmp_path / "cv"
  cv_dir.mkdir()
  from dermjax import cv  # pylint: disable=g-import-not-at-top
  rows = [{"fold": k, "seed": 0, "workdir": os.path.relpath(r, cv_dir),
           **cv.fold_row(r, ["test"])} for k, r in enumerate(runs)]
  summary = {"mean": {n: float(np.mean([r[n] for r in rows])) for n in rows[0] if "/" in n},
             "std": {n: float(np.std([r[n] for r in rows], ddof=1)) for n in rows[0] if "/" in n},
             "folds": rows}
  (cv_dir / "summary.json").write_text(json.dumps(summary))

  out = tmp_path / "report"
  result = report.build_report([*runs, str(cv_dir)], str(out), names=["seed0", "seed1", "cv"])

  with open(out / "report.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["run"] for r in table] == ["seed0", "seed1", "cv"]
  columns = list(table[0])
  assert columns[1:9] == ["AUC", "AP", "ACC", "SEN", "SPE", "SEN@SPE95", "SEN@SPE90", "SEN@SPE85"]
  assert "mean_attention" in columns and "AUC_std" in columns  # the model's report; CV std
  for r, run in zip(table, runs):
    saved = json.load(open(os.path.join(run, "results", "test.json")))
    assert float(r["AUC"]) == pytest.approx(saved["diagnosis"]["auc"])
    assert float(r["mean_attention"]) == pytest.approx(saved["report"]["mean_attention"])
  aucs = [float(r["AUC"]) for r in table[:2]]
  assert float(table[2]["AUC"]) == pytest.approx(np.mean(aucs))
  assert float(table[2]["AUC_std"]) == pytest.approx(np.std(aucs, ddof=1))
  markdown = (out / "report.md").read_text()
  assert "| run | AUC | AP |" in markdown and "±" in markdown.splitlines()[-1]
  image = np.asarray(Image.open(result["roc"]))
  assert result["roc"].endswith("roc_test.png") and image.shape[0] > 300
  assert set(result["rows"]) == {"seed0", "seed1", "cv"}


def test_roc_points_by_hand(tmp_path):
  # Positives 0.9, 0.4; negatives 0.7, 0.1: thresholds inf, .9, .7, .4, .1.
  points = roc.roc_points([0.9, 0.4, 0.7, 0.1], [1, 1, 0, 0])
  np.testing.assert_allclose(points["fpr"], [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(points["tpr"], [0, 0.5, 0.5, 1, 1])
  assert points["auc"] == pytest.approx(0.75)
  path = roc.plot_roc_curves({"a": points}, str(tmp_path / "r.png"))
  assert Image.open(path).size[0] > 300
