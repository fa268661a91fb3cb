"""Divergence guard: a train step whose loss or global gradient norm is non-finite or out
of bounds is never applied (`update_ok`, inside the jitted step), and the host stops the
run or counts the skipped step (`DivergenceGuard`, config.train.on_nonfinite).

The host reads one scalar per step ("applied"), one step late: step t's flag is read after
step t + 1 was dispatched, so the device always has the next step queued and the run
stops within one step of the first bad one. Checkpoints are only saved after the flag of
their step was read, so no non-finite state is ever saved.

A bad loss at step t is computed from the parameters left by step t - 1 (the last applied
update): a checkpoint of those parameters is finite but may be ruined (a learning rate of
1e6 leaves weights of 1e6 whose next loss is 1e19). So when the guard stops the run it
moves every checkpoint from that step on to checkpoints/diverged/ before naming the latest
good one: a checkpoint named good holds parameters that produced a finite, bounded loss
(the next step's, or the validation loss at an epoch end, which is checked the same way:
`check_eval`), and a rerun from it at a sane learning rate trains.
"""

import os

import jax.numpy as jnp
from absl import logging

from dermjax import checkpoint as ckpt_lib
from dermjax import faults


def update_ok(loss, grad_norm, train_config):
  """Scalar bool: loss and global gradient norm finite and within train.max_loss /
  train.max_grad_norm (bounds <= 0 are off)."""
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  max_loss = float(train_config.get("max_loss", 0) or 0)
  max_grad_norm = float(train_config.get("max_grad_norm", 0) or 0)
  if max_loss > 0:
    ok &= jnp.abs(loss) <= max_loss
  if max_grad_norm > 0:
    ok &= grad_norm <= max_grad_norm
  return ok


class Diverged(faults.RunError):
  """The divergence guard stopped the run (exit status 3)."""

  def __init__(self, message):
    super().__init__(message, exit_code=3)


class DivergenceGuard:
  """Host side: `check(step, metrics)` with each step's metrics (clu Averages holding
  "applied", "loss", "grad_norm") stops (Diverged) or counts per train.on_nonfinite."""

  def __init__(self, train_config, checkpoints, skipped=0, in_a_row=0):
    self.mode = train_config.get("on_nonfinite", "stop")
    if self.mode not in ("stop", "skip"):
      raise faults.RunError(f"train.on_nonfinite must be 'stop' or 'skip', got {self.mode!r}",
                            exit_code=2)
    self.patience = int(train_config.get("max_skipped_in_a_row", 10))
    self.bounds = (f"train.max_loss={train_config.get('max_loss')}, "
                   f"train.max_grad_norm={train_config.get('max_grad_norm')}")
    self.max_loss = train_config.get("max_loss", 0)
    self.checkpoints = checkpoints
    self.skipped, self.in_a_row = int(skipped), int(in_a_row)
    self.last_ok = None  # (step, metrics) of the newest applied step

  def check(self, step, metrics):
    """Raises Diverged when the run must stop at `step`; counts skipped steps."""
    if float(metrics["applied"].total) > 0:  # The one per-step host read (a scalar).
      self.last_ok, self.in_a_row = (step, metrics), 0
      return
    loss, grad_norm = float(metrics["loss"].compute()), float(metrics["grad_norm"].compute())
    what = (f"loss {loss:.6g}, gradient norm {grad_norm:.6g} (not finite or above "
            f"{self.bounds})")
    self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
    if self.mode == "skip" and self.in_a_row < self.patience:
      logging.warning("step %d: %s; update skipped (%d in a row, %d in all)", step, what,
                      self.in_a_row, self.skipped)
      return
    # The parameters of every step since the last applied update produced the bad losses.
    self._stop(f"training diverged at step {step}: {what}"
               + (f", {self.in_a_row} steps in a row" if self.mode == "skip" else ""),
               first_bad=step - self.in_a_row)

  def check_eval(self, step, split, losses):
    """Raises Diverged when the evaluation at `step` (of the parameters about to be saved)
    has a non-finite loss or one above train.max_loss."""
    loss = float(losses["loss"])
    if not bool(update_ok(loss, 0.0, {"max_loss": self.max_loss})):
      self._stop(f"training diverged by step {step}: {split} loss {loss:.6g} (not finite or "
                 f"above {self.bounds})", first_bad=step)

  def _stop(self, what, first_bad):
    """Sets the checkpoints of steps >= first_bad aside and raises Diverged naming the
    latest good checkpoint and the way out."""
    moved = self.checkpoints.set_aside_diverged(first_bad)
    latest = self.checkpoints.steps()
    last = ("none" if self.last_ok is None else
            f"{float(self.last_ok[1]['loss'].compute()):.6g} at step {self.last_ok[0]}")
    good = (f"latest good checkpoint: "
            f"{os.path.join(self.checkpoints.directory, ckpt_lib.LATEST, str(latest[-1]))}"
            if latest else "no good checkpoint (a rerun starts from step 0)")
    aside = (f" (checkpoints of step {first_bad} on moved to "
             f"{os.path.join(self.checkpoints.directory, ckpt_lib.DIVERGED)})" if moved else "")
    rerun = ("rerun with --resume_with_changed_config to resume there" if latest else "rerun")
    raise Diverged(f"{what}; last finite loss {last}; {good}{aside}; lower the learning rate "
                   f"and {rerun}, or set train.on_nonfinite=skip")
