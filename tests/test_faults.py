"""The fault suite: the 18 faults a user meets (issue #23), each ending in "continues
correctly" or "one clear line, the documented exit status, nothing lost". Where each lives
(R = tests/test_reliability.py: the real trainer in a subprocess, tests/reliability_driver.py
injecting the fault; F = this file; a process that dies or gets a signal is always a real
subprocess):

   1 kill -9 mid-run (between latest and best_*)   R test_kill9_between_latest_and_best_resumes_bit_exact
   2 corrupt checkpoint (truncated arrays, meta)   R test_damaged_newest_checkpoint_falls_back_to_the_previous_step,
                                                   F test_checkpoints_fall_back_past_a_garbled_meta_and_clean_temporaries
   3 divergence, finite blow-up (lr 1e6)           R test_learning_rate_1e6_saves_no_ruined_checkpoint_and_a_sane_rerun_trains,
                                                   F test_guard_sets_aside_the_checkpoint_that_diverged
   4 divergence, NaN loss (stop; skip mode)        R test_nan_stops_names_a_good_checkpoint_and_a_rerun_from_it_matches,
                                                   R test_skip_mode_counts_and_continues
   5 signals: SIGTERM / Ctrl-C, a second signal    R test_sigterm_mid_epoch_saves_that_step_and_resumes_exactly,
                                                   F test_second_signal_exits_at_once
   6 a second run on a locked workdir              R test_locked_workdir_exits_at_once_naming_the_holder
   7 resume with a changed config                  R test_resume_with_a_changed_config_is_refused
   8 disk full while saving (root: tmpfs)          R test_disk_full_while_saving_is_one_line
   9 read-only workdir                             R test_read_only_workdir_is_one_line
  10 bad datasets (missing data.dir, bad files)    R test_missing_data_dir_is_one_line_and_creates_nothing,
                                                   tests/test_prepare.py test_failed_prepare_reports_every_bad_file_and_keeps_the_old_dataset
  11 bad flags: unknown field, wrong type, unknown R test_unknown_config_field_is_one_line_with_nearest_names,
     table row, in every command taking --config  R test_wrongly_typed_field_is_one_line_exit_2,
                                                   F test_cv_and_evaluate_config_errors_are_one_line
  12 odd prediction inputs (odd sizes, truncated   tests/test_predict.py test_folder_of_odd_images_and_a_truncated_jpeg,
     JPEG, missing path, empty / image-less dir)  F test_predict_inputs_missing_or_without_images, test_predict_cli_without_images
  13 wrong workdirs for evaluate / predict         F test_wrong_workdirs_are_named, test_evaluate_cli_on_a_folder_that_is_no_run
  14 path traversal in CSV ids (../../x)           F test_path_traversal_id_is_one_line_from_evaluate
  15 kill -9 of a cross-validation mid-fold        tests/test_cv.py test_kill_9_mid_fold_then_resume_equals_an_uninterrupted_run
  16 damaged prepared data (shard gone / cut)      F test_damaged_prepared_shards_are_named_and_prepared_again
  17 wrong pretrained weights: a paper row without F test_paper_row_without_weights_stops_at_once,
     them, a missing path, another model's run     F test_pretrained_checked_before_any_data_work
  18 Ctrl-C while preparing the dataset            R test_ctrl_c_while_preparing_leaves_nothing_half_written

Plus the in-process pieces: the guard in the step and on the host, checkpoint fallback and
cleanup, the config comparison, metrics.jsonl truncation, storage errors, stderr filtering.
"""

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax import checkpoint
from dermjax import config_lib
from dermjax import divergence
from dermjax import faults
from dermjax import predict
from dermjax import pretrained
from dermjax import runs
from dermjax import weights
from dermjax import writers
from dermjax.data import errors
from dermjax.data import prepare
from dermjax.metrics import diagnosis

import test_train  # tests/ is on sys.path (rootdir-relative import under pytest).
import trained_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_update_ok_checks_finiteness_and_bounds():
  cfg = config_lib.base_config().train
  ok = lambda loss, norm: bool(divergence.update_ok(jnp.float32(loss), jnp.float32(norm), cfg))
  assert ok(0.7, 3.0)
  assert not ok(np.nan, 3.0) and not ok(0.7, np.inf) and not ok(-np.inf, 1.0)
  assert not ok(1e21, 1.0)            # a finite explosion (issue #16: loss 1e21)
  assert not ok(0.7, 5e14)            # gradient norm 5e14
  cfg.max_loss = cfg.max_grad_norm = 0.0  # bounds off: only finiteness
  assert ok(1e21, 5e14) and not ok(np.nan, 1.0)


def test_rejected_update_leaves_the_state_bit_identical():
  """A step over the loss bound: params, BN statistics and optimiser state unchanged, the
  step counter advanced, "applied" 0."""
  config = test_train.tiny_config()
  batch = test_train.host_batch()
  state, step = test_train.setup(config, batch)
  state, _ = step(state, batch)
  before = jax.tree.map(np.array, (state.params, state.batch_stats, state.opt_state))
  config.train.max_loss = 1e-9
  _, rejecting = test_train.setup(config, batch)
  after, metrics = rejecting(state, batch)
  assert float(metrics["applied"].compute()) == 0.0 and int(after.step) == 2
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.array, (after.params, after.batch_stats, after.opt_state)))


class _Avg:
  def __init__(self, value):
    self.total, self.value = np.float32(value), value

  def compute(self):
    return self.value


def _metrics(applied, loss=0.5):
  return {"applied": _Avg(applied), "loss": _Avg(loss), "grad_norm": _Avg(1.0)}


def test_guard_skip_counts_then_stops_after_n_in_a_row(tmp_path):
  cfg = config_lib.base_config().train
  cfg.on_nonfinite, cfg.max_skipped_in_a_row = "skip", 3
  guard = divergence.DivergenceGuard(cfg, checkpoint.Checkpoints(str(tmp_path)))
  guard.check(1, _metrics(1.0, loss=0.25))
  guard.check(2, _metrics(0.0, loss=np.nan))
  guard.check(3, _metrics(1.0))
  guard.check(4, _metrics(0.0, loss=np.nan))
  guard.check(5, _metrics(0.0, loss=np.nan))
  assert (guard.skipped, guard.in_a_row) == (3, 2)
  with pytest.raises(divergence.Diverged, match=r"diverged at step 6.*3 steps in a row.*"
                     r"last finite loss 0.5 at step 3.*no good checkpoint"):
    guard.check(6, _metrics(0.0, loss=np.nan))
  cfg.on_nonfinite = "stop"
  guard = divergence.DivergenceGuard(cfg, checkpoint.Checkpoints(str(tmp_path)))
  with pytest.raises(divergence.Diverged, match="at step 1: loss nan.*last finite loss none"):
    guard.check(1, _metrics(0.0, loss=np.nan))


def test_guard_sets_aside_the_checkpoint_that_diverged(tmp_path):
  """The loss of step 5 comes from the parameters saved at step 4: latest/4 (and a best_*
  of step 4) go to diverged/, latest/3 is named good; in skip mode a streak of skipped
  steps sets aside everything from the last applied update on; a validation loss out of
  bounds stops the run before its parameters are saved."""
  cfg = config_lib.base_config().train
  directory = str(tmp_path / "checkpoints")
  ckpts = checkpoint.Checkpoints(directory, ["validation/auc"])
  for step in (1, 2, 3, 4):
    ckpts.save_latest(step, _tiny_state(step), {"step": step})
  ckpts.save_best("validation/auc", 4, _tiny_state(4), {"step": 4})
  guard = divergence.DivergenceGuard(cfg, ckpts)
  guard.check(4, _metrics(1.0))
  good = os.path.join(directory, "latest", "3")
  with pytest.raises(divergence.Diverged, match=f"at step 5.*latest good checkpoint: {good} "
                     r"\(checkpoints of step 4 on moved to .*diverged\).*"
                     "--resume_with_changed_config"):
    guard.check(5, _metrics(0.0, loss=1e19))
  assert ckpts.steps() == [3] and ckpts.steps("validation/auc") == []
  assert sorted(os.listdir(os.path.join(directory, "diverged"))) == [
      "best_validation_auc-4", "latest-4"]
  cfg.on_nonfinite, cfg.max_skipped_in_a_row = "skip", 2
  skipping = divergence.DivergenceGuard(cfg, ckpts)
  ckpts.save_latest(4, _tiny_state(4), {"step": 4})
  skipping.check(4, _metrics(0.0, loss=np.nan))    # steps 4 and 5 skipped: the parameters
  with pytest.raises(divergence.Diverged, match="2 steps in a row.*no good checkpoint"):
    skipping.check(5, _metrics(0.0, loss=np.nan))  # of step 3 produced both losses.
  assert ckpts.steps() == []
  with pytest.raises(divergence.Diverged, match=r"by step 6: validation loss inf"):
    guard.check_eval(6, "validation", {"loss": float("inf")})
  guard.check_eval(6, "validation", {"loss": 0.7})
  ckpts.close()


def _tiny_state(value):
  return {"w": jnp.full((3,), value, jnp.float32)}


def test_checkpoints_fall_back_past_a_garbled_meta_and_clean_temporaries(tmp_path):
  directory = str(tmp_path / "checkpoints")
  ckpts = checkpoint.Checkpoints(directory, ["validation/auc"])
  for step in (1, 2, 3):
    ckpts.save_latest(step, _tiny_state(step), {"step": step})
  ckpts.save_best("validation/auc", 3, _tiny_state(3), {"step": 3})
  ckpts.save_latest(3, _tiny_state(99), {"step": 3})  # an existing step is never re-saved
  assert ckpts.steps() == [2, 3]                     # keeps the last 2
  ckpts.close()
  with open(os.path.join(directory, "latest", "3", "meta", "metadata"), "w") as f:
    f.write("{garbled")
  stale = os.path.join(directory, "latest", "4.orbax-checkpoint-tmp-123")
  os.makedirs(os.path.join(stale, "state"))
  ckpts = checkpoint.Checkpoints(directory, ["validation/auc"])
  assert not os.path.exists(stale)
  state, meta = ckpts.restore_latest(_tiny_state(0.0))
  assert meta == {"step": 2} and float(state["w"][0]) == 2.0
  assert os.listdir(os.path.join(directory, "corrupt")) == ["latest-3"]
  assert ckpts.supersede_after(2) == [os.path.join(directory, "superseded",
                                                   "best_validation_auc-3")]
  assert ckpts.steps("validation/auc") == []
  ckpts.save_latest(3, _tiny_state(3.5), {"step": 3})  # the rerun saves step 3 afresh
  assert float(ckpts.restore_latest(_tiny_state(0.0))[0]["w"][0]) == 3.5
  ckpts.close()


def test_config_differences_ignore_run_length_fields():
  a = config_lib.config_dict(config_lib.base_config())
  c = config_lib.base_config()
  c.train.num_epochs, c.train.max_steps, c.eval.splits = 99, 5, ("test",)
  assert config_lib.config_differences(a, config_lib.config_dict(c)) == []
  c.data.batch_size, c.optim.learning_rate = 2, 0.5
  assert config_lib.config_differences(a, config_lib.config_dict(c)) == [
      "data.batch_size: 8 -> 2", "optim.learning_rate: 0.0001 -> 0.5"]


def test_a_field_newer_than_the_checkpoint_at_its_default_is_no_difference():
  """A checkpoint written before data.normalization existed resumes without
  --resume_with_changed_config while the field keeps its default (the old behaviour)."""
  defaults = config_lib.config_dict(config_lib.base_config())
  stored = config_lib.config_dict(config_lib.base_config())
  del stored["data"]["normalization"]
  check = lambda c: config_lib.config_differences(stored, config_lib.config_dict(c),
                                                  defaults=defaults)
  c = config_lib.base_config()
  assert check(c) == []
  c.data.normalization = "imagenet"
  assert check(c) == ["data.normalization: '<absent>' -> 'imagenet'"]


def test_truncate_jsonl_keeps_one_row_per_step(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  rows = [{"step": s, "train/loss": 1.0} for s in range(1, 6)] + [
      {"step": 3, "final_validation/auc": 0.5}]
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "tra')
  assert writers.truncate_jsonl(path, 3) == 4
  with open(path) as f:
    assert [json.loads(l)["step"] for l in f] == [1, 2, 3]


def test_nonfinite_logits_are_reported_not_passed_to_sklearn():
  with pytest.raises(diagnosis.NonFiniteOutputs, match="2 of 4 examples"):
    diagnosis.diagnosis_metrics(np.array([[0.1], [np.nan], [np.inf], [0.3]]),
                                np.array([0, 1, 0, 1]))


def test_storage_error_digs_the_cause_out_of_a_chain():
  try:
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/x")
    except OSError as inner:
      raise ValueError("orbax wrapper") from inner
  except ValueError as e:
    message = str(faults.storage_error(e, "saving checkpoint latest/3 failed"))
  assert message.startswith("saving checkpoint latest/3 failed: No space left on device (/w/x)")
  wrapped = RuntimeError("tensorstore: OUT_OF_RANGE: write failed: [errno 28] "
                         "No space left on device")
  assert "No space left" in str(faults.storage_error(wrapped, "x"))
  assert faults.storage_error(ValueError("other"), "x") is None


def test_filtered_stderr_drops_only_event_loop_closed_tracebacks():
  out = io.StringIO()
  stream = faults.FilteredStderr(out)
  noise = ('Traceback (most recent call last):\n  File "a.py", line 1, in f\n'
           "    x()\nRuntimeError: Event loop is closed\n")
  real = "Traceback (most recent call last):\n  File \"b.py\"\nValueError: real\n"
  stream.write("before\n" + noise + real)
  stream.write("after")
  stream.flush()
  assert out.getvalue() == "before\n" + real + "after"
  out.truncate(0), out.seek(0)
  lines = noise.splitlines(keepends=True)
  interleaved = [lines[0], lines[1], lines[0], lines[1], lines[2], lines[2], lines[3], lines[3]]
  stream.write("".join(interleaved) + "next\n")  # two threads printing at once
  assert out.getvalue() == "next\n"


def test_second_signal_exits_at_once(tmp_path):
  """First SIGTERM while deferred: only recorded; the second: exit 143 at once."""
  script = ("import os, signal, time; from dermjax import faults\n"
            "with faults.StopSignals() as stop:\n"
            "  stop.deferred = True\n"
            "  os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
            "  print('requested', stop.requested, flush=True)\n"
            "  os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "  print('not reached', flush=True)\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
  assert proc.stdout.split() == ["requested", str(int(signal.SIGTERM))]
  assert "exiting now" in proc.stderr


def test_prepare_lock_removes_stale_temporaries_and_datasets_are_readable(isic2017_prepared):
  from dermjax.data import prepare  # pylint: disable=g-import-not-at-top
  prepared_dir, layout = isic2017_prepared
  assert os.stat(os.path.join(prepared_dir, layout)).st_mode & 0o777 == 0o777 & ~_umask()
  stale = os.path.join(prepared_dir, f".{layout}.tmp-killed")
  os.makedirs(os.path.join(stale, "tfds"))
  with prepare._PrepareLock(prepared_dir, layout):  # pylint: disable=protected-access
    assert not os.path.exists(stale)


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_a_checkpoint_of_another_model_is_refused_not_moved(tmp_path):
  directory = str(tmp_path / "checkpoints")
  ckpts = checkpoint.Checkpoints(directory)
  ckpts.save_latest(1, _tiny_state(1.0), {"step": 1})
  with pytest.raises(faults.RunError, match=r"latest/1 .* another model's state .*\(3,\)"):
    ckpts.restore_latest({"w": jnp.zeros((4,), jnp.float32)})
  assert ckpts.steps() == [1] and not os.path.exists(os.path.join(directory, "corrupt"))
  ckpts.close()



# --- the commands in subprocesses: one `dermjax: error:` line, the documented status -------


def cli(command, *args, timeout=240):
  """`python -m dermjax.<command> args` with the tiny test model registered."""
  code = (f"from dermjax import models; models.MODELS['tiny'] = 'tiny_model'; "
          f"from dermjax import {command}; {command}.run()")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [trained_run.TESTS_DIR, ROOT, os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=ROOT)


def error_line(proc, exit_code, *needles, only_line=False):
  """The run ended with exit status `exit_code` and the last stderr line `dermjax: error:`
  holding `needles` (with only_line: the only line), without a traceback."""
  assert proc.returncode == exit_code, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines and lines[-1].startswith("dermjax: error: "), proc.stderr[-3000:]
  assert not only_line or len(lines) == 1, proc.stderr[-3000:]
  for needle in needles:
    assert needle in lines[-1], lines[-1]
  return lines[-1]


@pytest.fixture
def tiny_run(tmp_path_factory):
  with trained_run.registered():
    yield trained_run.tiny_run(tmp_path_factory)


def test_paper_row_without_weights_stops_at_once(tmp_path):
  """Issue #21: a paper row that fine-tunes ImageNet weights, none given: one line naming
  torchvision's file and the convert command, exit 2, before the workdir or any data."""
  workdir = tmp_path / "W"
  proc = cli("main", "--config=configs/masll.py:masll_resnet101,paper", f"--workdir={workdir}")
  error_line(proc, 2, "resnet101-63fe2227.pth", "python scripts/convert_weights.py "
             "--arch=resnet101 --src=resnet101-63fe2227.pth", "--config.model.from_scratch=True",
             only_line=True)
  assert not workdir.exists()


@pytest.mark.parametrize("command,args,needles", [
    ("cv", ("--config=configs/gaze.py:thesiss",), ("did you mean 'thesis'", "deco_gap_17")),
    ("evaluate", ("--config.train.max_steps=four",), ("train.max_steps takes an int",)),
])
def test_cv_and_evaluate_config_errors_are_one_line(tiny_run, tmp_path, command, args, needles):
  proc = cli(command, f"--workdir={tiny_run if command == 'evaluate' else tmp_path / 'W'}",
             *args)
  error_line(proc, 2, *needles, only_line=True)


def test_evaluate_cli_on_a_folder_that_is_no_run(tmp_path):
  proc = cli("evaluate", f"--workdir={tmp_path}")
  error_line(proc, 2, str(tmp_path), "not a dermjax run", only_line=True)


def test_predict_cli_without_images(tiny_run, tmp_path):
  (tmp_path / "notes.txt").write_text("not an image")
  proc = cli("predict", f"--workdir={tiny_run}", f"--images={tmp_path}", f"--out={tmp_path}/o")
  error_line(proc, 1, "no images", "notes.txt", only_line=True)


def test_path_traversal_id_is_one_line_from_evaluate(tiny_run, tmp_path):
  """A ground-truth row whose id is a path (../../x) names no image: refused in one line."""
  raw = tmp_path / "raw"
  shutil.copytree(config_lib.load_run_config(tiny_run).data.synthetic_dir, raw,
                  ignore=shutil.ignore_patterns("prepared"))
  with open(raw / "ISIC-2017_Test_v2_Part3_GroundTruth.csv", "a") as f:
    f.write("../../x,1.0,0.0\n")
  proc = cli("evaluate", f"--workdir={tiny_run}", f"--config.data.dir={raw}",
             f"--out={tmp_path / 'out'}")
  error_line(proc, 1, "cannot prepare isic2017", "../../x")
  assert not (tmp_path / "out").exists()


# --- the same checks in-process ---------------------------------------------------------------


def _fake_run(path, model):
  """A folder that looks like a finished run of `model` to the start-up check."""
  os.makedirs(os.path.join(path, "checkpoints"))
  config = config_lib.base_config()
  config.model.name = model
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  return str(path)


def _refused(model_config, *needles):
  with pytest.raises(faults.RunError) as info:
    pretrained.check_pretrained(model_config)
  assert info.value.exit_code == 2 and "\n" not in str(info.value)
  for needle in needles:
    assert needle in str(info.value), str(info.value)


def test_pretrained_checked_before_any_data_work(tmp_path):
  masll = config_lib.load_config("configs/masll.py", "masll_resnet101,paper").model
  _refused(masll, "resnet101-63fe2227.pth", "--out=weights/resnet101")
  masll.from_scratch = True
  pretrained.check_pretrained(masll)
  pretrained.check_pretrained(config_lib.load_config("configs/masll.py").model)  # CPU row
  masll.pretrained = str(tmp_path / "nothing.pth")
  _refused(masll, "nothing.pth does not exist", "resnet101-63fe2227.pth")
  masll.pretrained = _fake_run(tmp_path / "tiny_run", "tiny")
  _refused(masll, "dermjax run of model 'tiny'", "ImageNet resnet101")
  converted = tmp_path / "converted"
  converted.mkdir()
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({"params/x": np.zeros(1, np.float32)}, str(converted / weights.CONVERTED_FILE),
            metadata={"format": "dermjax", "arch": "resnet18"})
  masll.pretrained = str(converted)
  _refused(masll, "converted for resnet18", "resnet101")

  cin = config_lib.load_config("configs/cin.py", "A+F,paper").model
  _refused(cin, "finished cin_lesion run",
           "--config=configs/cin.py:lesion_attention,isic2017,paper")
  cin.pretrained = str(converted / weights.CONVERTED_FILE)
  _refused(cin, "not a dermjax run", "cin_lesion")
  cin.pretrained = str(tmp_path / "tiny_run")
  _refused(cin, "dermjax run of model 'tiny'", "cin_lesion")
  cin.pretrained = _fake_run(tmp_path / "stage1", "cin_lesion")
  pretrained.check_pretrained(cin)


def test_wrong_workdirs_are_named(tiny_run, tmp_path):
  def refused(workdir, *needles):
    with pytest.raises(faults.RunError) as info:
      runs.load_run(str(workdir))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    for needle in needles:
      assert needle in str(info.value), str(info.value)

  refused(tmp_path / "missing", "does not exist")
  (tmp_path / "empty").mkdir()
  refused(tmp_path / "empty", "not a dermjax run")
  without = tmp_path / "without_config"
  shutil.copytree(tiny_run, without)
  os.remove(without / "config.json")
  with trained_run.registered():
    run = runs.load_run(str(without))  # continues with the checkpoint's own config
    assert run.config.model.name == "tiny" and run.step == runs.load_run(tiny_run).step
  other = config_lib.load_config("configs/attnmel.py", "vgg16_gap")
  (without / "config.json").write_text(other.to_json_best_effort())
  refused(without, "trained as model 'tiny'", "'vgg16'")
  shutil.rmtree(without / "checkpoints" / "latest")
  for name in os.listdir(without / "checkpoints"):
    shutil.rmtree(without / "checkpoints" / name)
  refused(without, "holds no saved checkpoint")
  legacy = json.loads(open(os.path.join(tiny_run, "config.json")).read())
  legacy["data"]["augment"]["rotation"] = True  # a run saved before rotation was a mode name
  assert config_lib.config_from_json(json.dumps(legacy)).data.augment.rotation is True


def test_predict_inputs_missing_or_without_images(tiny_run, tmp_path):
  for paths, code, needles in (([str(tmp_path / "nope")], 2, ["no such image file"]),
                               ([str(tmp_path)], 1, ["no images", "found in"])):
    with pytest.raises(faults.RunError) as info:
      predict.predict(tiny_run, paths, str(tmp_path / "out"))
    assert info.value.exit_code == code and all(n in str(info.value) for n in needles)
  (tmp_path / "a.csv").write_text("x")
  with pytest.raises(faults.RunError, match="skipped 1 other file.*a.csv"):
    predict.predict(tiny_run, [str(tmp_path)], str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def _shard(path, split):
  builder = os.path.join(path, "tfds", "dermjax_isic", "isic2017", "1.0.0")
  return os.path.join(builder, f"dermjax_isic-{split}.array_record-00000-of-00001")


def test_damaged_prepared_shards_are_named_and_prepared_again(isic2017_raw, isic2017_prepared,
                                                             tmp_path):
  """A deleted or truncated shard: load() fails in one line naming the file and the way
  out; prepare() rebuilds it from the raw data (same records), or says the raw data is gone."""
  prepared = str(tmp_path / "prepared")
  shutil.copytree(isic2017_prepared[0], prepared)
  target = os.path.join(prepared, "isic2017")
  counts = {s: len(prepare.load(prepared, "isic2017").source(s)) for s in ("train", "test")}
  os.remove(_shard(target, "test"))
  with pytest.raises(errors.DatasetError) as info:
    prepare.load(prepared, "isic2017")
  line = faults.dataset_message(info.value)
  assert "\n" not in line and _shard(target, "test") in line and "missing" in line
  assert f"delete {target}" in line
  prepare.prepare("isic2017", isic2017_raw, prepared, num_folds=3)   # prepared again
  assert {s: len(prepare.load(prepared, "isic2017").source(s)) for s in counts} == counts
  with open(_shard(target, "train"), "r+b") as f:
    f.truncate(os.path.getsize(_shard(target, "train")) // 2)
  with pytest.raises(errors.DatasetError) as info:
    prepare.prepare("isic2017", str(tmp_path / "gone"), prepared, num_folds=3)
  line = faults.dataset_message(info.value)
  assert "\n" not in line and _shard(target, "train") in line and "damaged" in line
  assert "gone" in line
