"""In-process checks of the reliability pieces (tests/test_reliability.py runs them end to
end in subprocesses): the divergence guard in the step and on the host, checkpoint
fallback and cleanup, the config comparison, metrics.jsonl truncation, signals, errors."""

import errno
import io
import json
import os
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
from dermjax import train
from dermjax import writers
from dermjax.metrics import diagnosis

import test_train  # tests/ is on sys.path (rootdir-relative import under pytest).

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
                     r"last finite loss 0.5 at step 3.*latest good checkpoint: none"):
    guard.check(6, _metrics(0.0, loss=np.nan))
  cfg.on_nonfinite = "stop"
  guard = divergence.DivergenceGuard(cfg, checkpoint.Checkpoints(str(tmp_path)))
  with pytest.raises(divergence.Diverged, match="at step 1: loss nan.*last finite loss none"):
    guard.check(1, _metrics(0.0, loss=np.nan))


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
