"""`python -m dermjax.main` with the tiny test model registered, plus injected faults, for
the subprocess tests of tests/test_reliability*.py.

  DERMJAX_TEST_FAULT = "<what>@<step>[,<what>@<step>]"  with <what> one of
      kill_after_latest   SIGKILL itself right after `latest` of that step is saved
                          (before its best_* saves)
      sigterm / sigint    sends itself that signal while training that step (the signal
                          is delivered and handled as one from outside would be)
      sigterm2            sends SIGTERM twice at that step (the second must exit at once)
      sigint_in_prepare   (step ignored) sends itself SIGINT while preparing the dataset,
                          after its shards are written and before stats.json (Ctrl-C in
                          the longest part of a first run)
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dermjax import checkpoint  # pylint: disable=g-import-not-at-top
from dermjax import main
from dermjax import models
from dermjax import steps
from dermjax.data import prepare

models.MODELS["tiny"] = "tiny_model"


def _faults():
  spec = os.environ.get("DERMJAX_TEST_FAULT", "")
  return [(what, int(step)) for what, step in (f.split("@") for f in spec.split(",") if f)]


def _install(faults):
  if any(what == "sigint_in_prepare" for what, _ in faults):
    write_metadata = prepare._write_metadata  # pylint: disable=protected-access

    def interrupted_write_metadata(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGINT)
      return write_metadata(*args, **kwargs)

    prepare._write_metadata = interrupted_write_metadata  # pylint: disable=protected-access
  kill_after = {step for what, step in faults if what == "kill_after_latest"}
  signals = {step: what for what, step in faults if what.startswith("sig")}
  if kill_after:
    save_latest = checkpoint.Checkpoints.save_latest

    def save_latest_then_die(self, step, state, meta):
      save_latest(self, step, state, meta)
      if int(step) in kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpoints.save_latest = save_latest_then_die
  if signals:
    jit_steps = steps.jit_steps

    def jit_steps_with_signals(*args, **kwargs):
      train_step, eval_step = jit_steps(*args, **kwargs)

      def step_fn(state, batch):
        step = int(state.step) + 1
        what = signals.get(step)
        if what:
          sig = signal.SIGINT if what == "sigint" else signal.SIGTERM
          for _ in range(2 if what == "sigterm2" else 1):
            os.kill(os.getpid(), sig)
        return train_step(state, batch)

      return step_fn, eval_step

    steps.jit_steps = jit_steps_with_signals


if __name__ == "__main__":
  _install(_faults())
  main.run()
