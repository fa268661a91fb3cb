"""dermjax.cv: folds through the shared trainer, one fold per process, resuming after kill -9,
and the summary (mean ± std over folds)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import trained_run
from dermjax import cv

FOLDS = 2
EPOCHS = 6   # one step per epoch, a checkpoint after each: room to kill a fold midway.


def _config(synthetic_dir):
  config = trained_run.get_config()
  config.train.num_epochs = EPOCHS
  config.train.max_steps = -1
  config.eval.num_visualizations = 0
  config.data.synthetic_dir = synthetic_dir
  return config


def _first_checkpoint(workdir):
  latest = os.path.join(workdir, "fold_1", "checkpoints", "latest")
  return os.path.isdir(latest) and any(n.isdigit() for n in os.listdir(latest))


def test_kill_9_mid_fold_then_resume_equals_an_uninterrupted_run(tmp_path, tmp_path_factory):
  synthetic = str(tmp_path_factory.mktemp("cv_synthetic"))
  config = _config(synthetic)
  reference = tmp_path / "reference"
  with trained_run.registered():
    # Folds as separate processes would run them (--fold=k): the summary grows with them.
    first = cv.cross_validate(config, str(reference), folds=FOLDS, only_fold=0)
    assert first["folds_finished"] == 1 and not (reference / "fold_1").exists()
    expected = cv.cross_validate(config, str(reference), folds=FOLDS, only_fold=1)
  assert expected["folds_finished"] == FOLDS

  workdir = tmp_path / "killed"
  code = ("from dermjax import models; models.MODELS['tiny'] = 'tiny_model'; "
          "from dermjax import cv; from absl import app; cv.define_flags(); app.run(cv.main)")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([trained_run.TESTS_DIR, env.get("PYTHONPATH", "")])
  args = [sys.executable, "-c", code, f"--config={trained_run.TESTS_DIR}/trained_run.py",
          f"--workdir={workdir}", f"--folds={FOLDS}", f"--config.train.num_epochs={EPOCHS}",
          "--config.train.max_steps=-1", "--config.eval.num_visualizations=0",
          f"--config.data.synthetic_dir={synthetic}"]
  log = open(tmp_path / "cv.log", "wb")  # (a pipe would fill up and block the process)
  process = subprocess.Popen(args, env=env, stdout=log, stderr=log)
  deadline = time.time() + 300
  while not _first_checkpoint(workdir) and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  log.close()
  assert process.returncode == -signal.SIGKILL, (tmp_path / "cv.log").read_text()[-3000:]
  assert (workdir / "fold_0" / "results" / "test.json").exists()
  assert not (workdir / "fold_1" / "results" / "test.json").exists(), "fold 1 finished unkilled"
  fold0_written = os.path.getmtime(workdir / "fold_0" / "results" / "test.json")

  with trained_run.registered():
    resumed = cv.cross_validate(config, str(workdir), folds=FOLDS)
  assert os.path.getmtime(workdir / "fold_0" / "results" / "test.json") == fold0_written
  metrics = sorted(json.loads((workdir / "fold_1" / "tensorboard" / "metrics.jsonl")
                              .read_text().splitlines()[-1]))
  assert metrics  # the fold's log continued in the same folder
  assert resumed["folds_finished"] == FOLDS
  assert set(resumed["mean"]) == set(expected["mean"])
  for name in expected["mean"]:
    for stat in ("mean", "std"):
      a, b = resumed[stat][name], expected[stat][name]
      assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-6), name
  assert [r["fold"] for r in resumed["folds"]] == [0, 1]

  # mean ± std by hand from the folds' results files.
  values = [json.loads((workdir / f"fold_{k}" / "results" / "test.json").read_text())
            ["losses"]["loss"] for k in range(FOLDS)]
  assert resumed["mean"]["test/loss"] == pytest.approx(np.mean(values))
  assert resumed["std"]["test/loss"] == pytest.approx(np.std(values, ddof=1))
  table = (workdir / "summary.md").read_text()
  assert "| test/loss |" in table and "±" in table and "| 1 | 0 |" in table


def test_fold_directories_and_configs(tmp_path):
  config = trained_run.get_config()
  c = cv.fold_config(config, 3, 2, 5, str(tmp_path))
  assert (c.data.fold, c.data.num_folds, c.seed, c.data.seed) == (3, 5, 2, 2)
  assert c.data.synthetic_dir == str(tmp_path / "synthetic_isic2017")
  assert cv.fold_dir("W", 3, 0, 1) == os.path.join("W", "fold_3")
  assert cv.fold_dir("W", 3, 2, 3) == os.path.join("W", "fold_3_seed_2")
  with pytest.raises(ValueError, match="not in"):
    cv.cross_validate(config, str(tmp_path), folds=2, only_fold=2)
