"""A run survives faults, refuses what would corrupt it, stops loudly on divergence: each
test runs the real trainer (`python tests/reliability_driver.py`, i.e. dermjax.main with
the tiny model) as a subprocess and kills, signals or damages it at a chosen moment.

The tiny experiment (tests/reliability_config.py): 3 steps per epoch, 9 steps, `latest`
at steps 2, 3, 5, 6, 8, 9 (every 2 steps and at epoch ends), evaluation at 3, 6, 9.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "reliability_driver.py")
CONFIG = os.path.join(ROOT, "tests", "reliability_config.py")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """The tiny synthetic dataset, written and prepared once for every run of this file."""
  from dermjax import config_lib, input_pipeline  # pylint: disable=g-import-not-at-top
  from dermjax.data import prepare  # pylint: disable=g-import-not-at-top
  data = config_lib.load_config(CONFIG).data
  data.synthetic_dir = str(tmp_path_factory.mktemp("reliability") / "synthetic")
  raw = input_pipeline.ensure_synthetic(data, None)
  prepare.prepare(data.layout, raw, os.path.join(raw, "prepared"), seed=data.split_seed,
                  num_folds=data.num_folds)
  return raw


def run(workdir, synthetic, *flags, fault=None, timeout=240):
  """Runs the trainer on `workdir`; returns the CompletedProcess (stdout+stderr in .stderr)."""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu", DERMJAX_TEST_FAULT=fault or "")
  cmd = [sys.executable, DRIVER, f"--config={CONFIG}", f"--workdir={workdir}",
         f"--config.data.synthetic_dir={synthetic}", *flags]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def last_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  return lines[-1] if lines else ""


def one_line_error(proc, rc, *needles):
  """Exit status `rc`, no traceback, a last line `dermjax: error: ...` holding `needles`."""
  assert proc.returncode == rc, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  line = last_line(proc)
  assert line.startswith("dermjax: error: "), proc.stderr[-3000:]
  for needle in needles:
    assert needle in line, line
  return line


def steps(workdir, name="latest"):
  path = os.path.join(workdir, "checkpoints", name)
  return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []


def restore(workdir, step, name="latest"):
  from dermjax import checkpoint  # pylint: disable=g-import-not-at-top
  manager = checkpoint._manager(os.path.join(workdir, "checkpoints", name))
  restored = manager.restore(step)
  manager.close()
  return restored["state"], checkpoint.decode_json(restored["meta"])


def assert_same_params(workdir_a, workdir_b, step=9):
  import jax  # pylint: disable=g-import-not-at-top
  a, b = restore(workdir_a, step)[0], restore(workdir_b, step)[0]
  leaves_a, leaves_b = jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit on CPU
  for x, y in zip(jax.tree.leaves(a["opt_state"]), jax.tree.leaves(b["opt_state"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def jsonl(workdir):
  with open(os.path.join(workdir, "tensorboard", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def train_steps(workdir):
  return [r["step"] for r in jsonl(workdir) if "train/loss" in r]


def results(workdir):
  with open(os.path.join(workdir, "results", "validation.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def straight(synthetic, tmp_path_factory):
  """An uninterrupted 9-step run: the reference of every resumed run."""
  workdir = str(tmp_path_factory.mktemp("straight") / "run")
  proc = run(workdir, synthetic)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert steps(workdir) == [8, 9]  # The last 2 `latest` steps are kept.
  return workdir


def test_kill9_between_latest_and_best_resumes_bit_exact(straight, synthetic, tmp_path):
  """SIGKILL right after `latest` of step 3 (an epoch end, before its best_* saves): the
  rerun (not blocked by the dead run's lock) saves the missing best_* and finishes with
  the straight run's parameters and metrics, bit for bit."""
  workdir = str(tmp_path / "run")
  proc = run(workdir, synthetic, fault="kill_after_latest@3")
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert steps(workdir) == [2, 3]
  assert steps(workdir, "best_validation_loss") == []
  proc = run(workdir, synthetic)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 3" in proc.stderr
  assert steps(workdir, "best_validation_auc") == steps(straight, "best_validation_auc")
  assert steps(workdir, "best_validation_loss") == steps(straight, "best_validation_loss")
  assert_same_params(straight, workdir)
  assert results(workdir) == results(straight)
  assert train_steps(workdir) == list(range(1, 10))


def test_sigterm_mid_epoch_saves_that_step_and_resumes_exactly(straight, synthetic, tmp_path):
  """SIGTERM during step 4 (mid-epoch, no checkpoint due): step 4 finishes, `latest` is
  saved there, the run exits 143 saying how to resume; the rerun matches the straight run."""
  workdir = str(tmp_path / "run")
  proc = run(workdir, synthetic, fault="sigterm@4")
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  line = last_line(proc)
  assert "SIGTERM at step 4" in line and "rerun the same command to resume" in line, line
  assert steps(workdir) == [3, 4]
  proc = run(workdir, synthetic)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 4" in proc.stderr
  assert_same_params(straight, workdir)
  assert results(workdir) == results(straight)
  assert train_steps(workdir) == list(range(1, 10))


def test_damaged_newest_checkpoint_falls_back_to_the_previous_step(straight, synthetic, tmp_path):
  """Truncated array files in latest/9: one warning line, latest/9 moved to corrupt/, the
  run resumes from step 8 (best_* newer than 8 moved to superseded/), redoes step 9 and
  ends where the straight run did; metrics.jsonl keeps one row per step."""
  workdir = str(tmp_path / "run")
  shutil.copytree(straight, workdir)
  state = os.path.join(workdir, "checkpoints", "latest", "9", "state")
  for root, _, names in os.walk(state):  # every array data file cut in half
    for name in names:
      if os.path.basename(root) == "d" or root.endswith("ocdbt.process_0"):
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  proc = run(workdir, synthetic)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [l for l in proc.stderr.splitlines() if "latest/9 is unreadable" in l]
  assert len(warnings) == 1, proc.stderr[-3000:]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt", "latest-9"))
  assert "resumed from step 8" in proc.stderr
  assert steps(workdir) == [8, 9]
  assert_same_params(straight, workdir)
  assert results(workdir) == results(straight)
  assert train_steps(workdir) == list(range(1, 10))
  assert sum(any(k.startswith("final_") for k in r) for r in jsonl(workdir)) == 1
  assert len(proc.stderr.splitlines()) < 200  # No orbax / asyncio traceback noise.


def finite_params(workdir, bound=1e3):
  """Every parameter of every checkpoint left in latest/ and best_*/ finite and below `bound`."""
  import jax  # pylint: disable=g-import-not-at-top
  for name in os.listdir(os.path.join(workdir, "checkpoints")):
    for step in steps(workdir, name):
      state, _ = restore(workdir, step, name)
      for x in jax.tree.leaves(state["params"]):
        assert np.all(np.abs(np.asarray(x)) < bound), (name, step)


def test_nan_stops_names_a_good_checkpoint_and_a_rerun_from_it_matches(straight, synthetic,
                                                                     tmp_path):
  """A NaN loss on the batch of step 3 (it holds example 6): exit status 3 within one step;
  latest/2, whose parameters produced that loss, goes to checkpoints/diverged/, latest/1 is
  named good, and the rerun the message advises (the fault removed, a changed config
  accepted) resumes there and ends bit for bit where the straight run did."""
  workdir = str(tmp_path / "run")
  proc = run(workdir, synthetic, "--config.model.nan_for_index=6",
             "--config.train.checkpoint_every_steps=1")
  line = one_line_error(proc, 3, "diverged at step 3", "loss nan", "last finite loss",
                        "at step 2", "latest good checkpoint: " + os.path.join(
                            workdir, "checkpoints", "latest", "1"), "diverged",
                        "--resume_with_changed_config")
  assert "not finite" in line
  assert steps(workdir) == [1]
  assert os.listdir(os.path.join(workdir, "checkpoints", "diverged")) == ["latest-2"]
  assert max(train_steps(workdir)) <= 4  # Stopped within one step of the first NaN.
  assert not os.path.exists(os.path.join(workdir, "results"))
  proc = run(workdir, synthetic, "--resume_with_changed_config")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 1" in proc.stderr
  assert_same_params(straight, workdir)
  assert results(workdir) == results(straight)


def test_learning_rate_1e6_saves_no_ruined_checkpoint_and_a_sane_rerun_trains(
    straight, synthetic, tmp_path):
  """Issue #23: lr 1e6 leaves weights of ~1e6 after step 1 and a loss of ~1e19 at step 2.
  The run exits 3; latest/1 (those weights) is set aside, so no checkpoint is named good and
  none with such weights stays in latest/ or best_*/; the rerun at the table's rate trains
  to the end, to the straight run's parameters."""
  workdir = str(tmp_path / "run")
  proc = run(workdir, synthetic, "--config.optim.learning_rate=1e6",
             "--config.train.checkpoint_every_steps=1")
  one_line_error(proc, 3, "diverged at step 2", "above train.max_loss", "no good checkpoint")
  assert steps(workdir) == []
  assert os.listdir(os.path.join(workdir, "checkpoints", "diverged")) == ["latest-1"]
  finite_params(workdir)
  proc = run(workdir, synthetic, "--resume_with_changed_config")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_same_params(straight, workdir)
  assert results(workdir) == results(straight)


def test_skip_mode_counts_and_continues(synthetic, tmp_path):
  """A NaN loss on the batch holding training example 5 (once per epoch) in skip mode:
  3 updates dropped and counted, the run finishes, its parameters stay finite."""
  workdir = str(tmp_path / "run")
  proc = run(workdir, synthetic, "--config.train.on_nonfinite=skip",
             "--config.model.nan_for_index=5", "--config.train.max_skipped_in_a_row=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.count("update skipped") == 3
  applied = [r["train/applied"] for r in jsonl(workdir) if "train/applied" in r]
  assert len(applied) == 9 and applied.count(0.0) == 3 and applied.count(1.0) == 6
  state, meta = restore(workdir, 9)
  assert meta["skipped_steps"] == 3
  import jax  # pylint: disable=g-import-not-at-top
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_locked_workdir_exits_at_once_naming_the_holder(synthetic, tmp_path):
  """A live process holds the lock: the run exits 1 at once naming its pid; once that
  process is SIGKILLed the lock is free."""
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from dermjax import faults; "
       "faults.WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)",
       workdir], env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    start = time.monotonic()
    proc = run(workdir, synthetic)
    one_line_error(proc, 1, f"pid {holder.pid}", "in use", "started")
    assert time.monotonic() - start < 60
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  finally:
    holder.kill()
    holder.wait()
  from dermjax import faults  # pylint: disable=g-import-not-at-top
  faults.WorkdirLock(workdir).acquire().release()  # kill -9 left no stale lock.


def test_resume_with_a_changed_config_is_refused(straight, synthetic, tmp_path):
  """Another batch size on resume: exit 2 listing the field; nothing is written."""
  workdir = str(tmp_path / "run")
  shutil.copytree(straight, workdir)
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in ("config.json",)}
  proc = run(workdir, synthetic, "--config.data.batch_size=2", "--config.train.num_epochs=5")
  line = one_line_error(proc, 2, "data.batch_size: 4 -> 2", "--resume_with_changed_config")
  assert "num_epochs" not in line  # Run-length fields may change.
  assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in before}


def test_unknown_config_field_is_one_line_with_nearest_names(synthetic, tmp_path):
  proc = run(str(tmp_path / "run"), synthetic, "--config.train.max_step=3")
  one_line_error(proc, 2, "unknown config field train.max_step", "train.max_steps")
  assert not os.path.exists(tmp_path / "run")


def test_missing_data_dir_is_one_line_and_creates_nothing(synthetic, tmp_path):
  missing = tmp_path / "no" / "ISIC2017"
  proc = run(str(tmp_path / "run"), synthetic, f"--config.data.dir={missing}")
  one_line_error(proc, 1, str(missing), "does not exist")
  assert not os.path.exists(tmp_path / "no")


def _mount_tmpfs(path, options):
  os.makedirs(path, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
  return result.returncode == 0


def test_read_only_workdir_is_one_line(synthetic, tmp_path):
  parent = tmp_path / "ro"
  if os.geteuid() == 0:  # Root writes through mode bits: use a read-only mount.
    if not _mount_tmpfs(parent, "ro,size=1m"):
      pytest.skip("root without mount permission: cannot make a read-only folder")
  else:
    parent.mkdir()
    parent.chmod(0o555)
  try:
    proc = run(str(parent / "run"), synthetic)
    one_line_error(proc, 1, "cannot write to workdir", str(parent / "run"))
  finally:
    if os.geteuid() == 0:
      subprocess.run(["umount", str(parent)])
    else:
      parent.chmod(0o755)


def test_disk_full_while_saving_is_one_line(synthetic, tmp_path):
  """A workdir on a full tmpfs (root only): the run stops with the cause in one line and
  no half-written checkpoint folder stays."""
  if os.geteuid() != 0 or not _mount_tmpfs(tmp_path / "full", "size=256k"):
    pytest.skip("needs root to mount a small tmpfs")
  try:
    workdir = tmp_path / "full" / "run"
    proc = run(str(workdir), synthetic, "--config.train.checkpoint_every_steps=1",
               fault=None)
    one_line_error(proc, 1, "No space left on device")
    assert len(proc.stderr.splitlines()) < 200, proc.stderr[-3000:]
    leftovers = [p for p, _, _ in os.walk(workdir) if ".orbax-checkpoint-tmp" in p]
    assert not leftovers
  finally:
    subprocess.run(["umount", str(tmp_path / "full")])


def test_ctrl_c_while_preparing_leaves_nothing_half_written(synthetic, tmp_path):
  """SIGINT after the shards are written, before stats.json: exit 130 in one line, no
  temporary folder and no dataset left; a rerun prepares it whole."""
  prepared = tmp_path / "prepared"
  proc = run(str(tmp_path / "run"), synthetic, f"--config.data.prepared_dir={prepared}",
             fault="sigint_in_prepare@0")
  one_line_error(proc, 130, "SIGINT", "rerun the same command")
  assert [n for n in os.listdir(prepared) if not n.endswith(".lock")] == []
  from dermjax.data import prepare  # pylint: disable=g-import-not-at-top
  prepare.prepare("isic2017", synthetic, str(prepared), num_folds=5)
  assert len(prepare.load(str(prepared), "isic2017").source("train")) == 12


def test_wrongly_typed_field_is_one_line_exit_2(synthetic, tmp_path):
  """A value of the wrong type: the only line on stderr, exit 2 (an unknown table row goes
  through the same parser: tests/test_faults.py, in dermjax.cv)."""
  proc = run(str(tmp_path / "run"), synthetic, "--config.train.max_steps=four")
  one_line_error(proc, 2, "config field train.max_steps takes an int", "'four'")
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
  assert not os.path.exists(tmp_path / "run")
