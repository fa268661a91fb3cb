"""The shared trainer: the training loop over the jitted steps of dermjax.steps.

Any registered model (dermjax.models) runs under it; the model module supplies `build`,
`loss` and optionally `loss_stats`, `eval_arrays`, `report`, `explain` (the contract in
dermjax/models/__init__.py). Diagnosis metrics and predictions exist for models whose
outputs hold "logits". The trainer owns the loop, checkpoints (dermjax.checkpoint), the
divergence guard (dermjax.divergence), summaries (dermjax.writers) and the results under
the workdir (written by dermjax.evaluation); the mesh, TrainState and steps are
dermjax.steps':

  workdir/checkpoints/{latest,best_<metric>}/   orbax checkpoints
  workdir/tensorboard/                          event files + metrics.jsonl
  workdir/results/<split>.json                  final metrics (best checkpoint)
  workdir/predictions/<split>.npz               ids, scores, logits, labels
  workdir/explanations/<split>/                 the model's explain() output
"""

import math
import os
import signal
import time

import jax
from absl import logging

from dermjax import checkpoint as ckpt_lib
from dermjax import config_lib
from dermjax import divergence
from dermjax import evaluation
from dermjax import faults
from dermjax import input_pipeline
from dermjax import models
from dermjax import optim
from dermjax import pretrained
from dermjax import steps
from dermjax import writers
from dermjax import xla_cpu


def _flat_value(result, metric):
  """Value of "split/name" (name from losses, diagnosis or report) in {split: result}."""
  split, name = metric.split("/", 1)
  scalars = evaluation.scalar_summaries(split, result[split])
  if metric not in scalars:
    raise ValueError(f"config.train metric {metric!r} not found; available: {sorted(scalars)}")
  return scalars[metric]


def _better(value, best, mode):
  if value is None or not math.isfinite(value):
    return False
  return best is None or (value < best if mode == "min" else value > best)


def tracked_metrics(config):
  """{metric: mode} checkpointed as best: checkpoint_metric (its mode) + keep_best (max)."""
  tracked = {config.train.checkpoint_metric: config.train.checkpoint_mode}
  for metric in config.train.keep_best:
    tracked.setdefault(metric, "max")
  for metric, mode in tracked.items():
    if mode not in ("min", "max"):
      raise ValueError(f"config.train.checkpoint_mode must be 'min' or 'max', got {mode!r}")
    if "/" not in metric:
      raise ValueError(f"checkpoint metric {metric!r} must be '<split>/<name>'")
  return tracked


def train_and_evaluate(config, workdir: str, *, resume_with_changed_config=False) -> dict:
  """Trains `config.model` as `config` says, resuming from workdir; returns {split: result}.

  Holds <workdir>/.lock for the whole run (faults.WorkdirLock); SIGINT / SIGTERM stop it
  at a step boundary after saving `latest` (faults.Interrupted). Raises faults.RunError
  (one line) for missing or wrong pretrained weights (pretrained.check_pretrained), a locked /
  unwritable workdir, a changed config on resume, divergence.
  """
  xla_cpu.apply(config.train.get("xla_cpu_conv"))  # Warns only if JAX started otherwise.
  pretrained.check_pretrained(config.model)  # Seconds, before the workdir or any data work.
  workdir = faults.writable_workdir(os.path.abspath(workdir))
  lock = faults.WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
  try:
    with faults.StopSignals() as stop:
      return _train_and_evaluate(config, workdir, stop, resume_with_changed_config)
  finally:
    if lock is not None:
      lock.release()


def _due(every, value):
  return every > 0 and value >= every


def _train_and_evaluate(config, workdir, stop, resume_with_changed_config):
  tracked = tracked_metrics(config)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"), tracked)
  changed = config_lib.check_resume_config(config, checkpoints.latest_meta(),
                                           resume_with_changed_config)
  mesh = steps.create_mesh()
  datasets = input_pipeline.create_datasets(config.data, mesh=mesh, workdir=workdir)
  model_lib = models.get(config.model.name)
  module = model_lib.build(config)
  loss_stats_fn = getattr(model_lib, "loss_stats", None)
  loss_stats = loss_stats_fn(datasets.stats, config) if loss_stats_fn else {}
  steps_per_epoch = int(datasets.steps_per_epoch)
  total_steps = int(config.train.num_epochs) * steps_per_epoch
  if config.train.max_steps > 0:
    total_steps = min(total_steps, int(config.train.max_steps))

  state, tx, mask = steps.create_train_state(
      config, module, datasets.batch_shapes(), mean=datasets.mean, std=datasets.std,
      steps_per_epoch=steps_per_epoch, mesh=mesh)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  num_trainable = sum(x.size for x, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask))
                      if m)
  logging.info("model %s: %d parameters, %d trainable; %d steps/epoch, %d steps, %d device(s)",
               config.model.name, num_params, num_trainable, steps_per_epoch, total_steps,
               jax.device_count())

  best = {m: None for m in tracked}
  best_steps = {m: None for m in tracked}
  meta = {}
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, meta = restored
    datasets.train.set_state(meta["train_iterator"])
    best.update({k: v for k, v in meta.get("best", {}).items() if k in best})
    best_steps.update({k: v for k, v in meta.get("best_steps", {}).items() if k in best})
    logging.info("resumed from step %d", int(state.step))
  elif os.path.isdir(os.path.join(checkpoints.directory, ckpt_lib.CORRUPT)):
    logging.warning("no readable checkpoint in %s; starting from step 0", checkpoints.directory)
  start_step = int(state.step)
  checkpoints.supersede_after(start_step)
  for metric, step in best_steps.items():  # A save killed between latest and best_*.
    if step == start_step and start_step not in checkpoints.steps(metric):
      checkpoints.save_best(metric, start_step, state, meta)

  writer = writers.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                 enabled=jax.process_index() == 0, resume_step=start_step)
  train_step, eval_step = steps.jit_steps(module, model_lib, tx, mask, config, loss_stats,
                                          datasets.mean, datasets.std, mesh)
  if config.train.save_config and jax.process_index() == 0:
    config_lib.record_config(config, workdir, start_step, changed)

  guard = divergence.DivergenceGuard(config.train, checkpoints, meta.get("skipped_steps", 0),
                                     meta.get("skipped_in_a_row", 0))
  progress = writers.Progress(total_steps, start_step)
  accumulated = pending = None
  eval_every = max(int(config.train.eval_every_epochs), 1)
  every_steps = int(config.train.get("checkpoint_every_steps", 0) or 0)
  every_seconds = 60 * float(config.train.get("checkpoint_every_minutes", 0) or 0)
  if jax.process_count() > 1:
    every_seconds = 0  # Hosts' clocks would disagree on a collective save.
  saved_step, saved_time = start_step, time.monotonic()
  checkpoint_split = config.train.checkpoint_metric.split("/", 1)[0]
  stop.deferred = True  # Signals now stop at the next step boundary (after a save).
  for step in range(start_step + 1, total_steps + 1):
    batch = next(datasets.train)
    state, step_metrics = train_step(state, batch)
    if pending is not None:
      guard.check(*pending)  # The previous step, while this one runs on the device.
    pending = (step, step_metrics)
    accumulated = step_metrics if accumulated is None else {
        k: accumulated[k].merge(v) for k, v in step_metrics.items()}
    if step % config.train.log_every_steps == 0 or step == total_steps:
      scalars = {f"train/{k}": float(v.compute()) for k, v in accumulated.items()}
      steps_per_sec, _ = progress(step, f"loss {scalars['train/loss']:.4f}")
      scalars["train/steps_per_sec"] = steps_per_sec
      scalars.update({f"train/lr_{g}": lr for g, lr in
                      optim.learning_rates(config.optim, steps_per_epoch, step - 1).items()})
      writer.write_scalars(step, scalars)
      accumulated = None
    epoch_end = step % steps_per_epoch == 0
    if not (epoch_end or step == total_steps or stop.requested is not None
            or _due(every_steps, step - saved_step)
            or _due(every_seconds, time.monotonic() - saved_time)):
      continue
    guard.check(*pending)  # Never save (or evaluate) a state after an unchecked step.
    pending = None
    meta = {"step": step, "epoch": step / steps_per_epoch,
            "train_iterator": datasets.train.get_state(),
            "config": config_lib.config_dict(config),
            "skipped_steps": guard.skipped, "skipped_in_a_row": guard.in_a_row}
    improved = []
    if (epoch_end and (step // steps_per_epoch) % eval_every == 0) or step == total_steps:
      losses, arrays = evaluation.run_eval(eval_step, state, datasets.eval(checkpoint_split))
      guard.check_eval(step, checkpoint_split, losses)  # These parameters' loss, too.
      results = {checkpoint_split: evaluation.split_metrics(losses, arrays, config, model_lib,
                                                            datasets.class_names)}
      scalars = evaluation.scalar_summaries(checkpoint_split, results[checkpoint_split])
      writer.write_scalars(step, scalars)
      logging.info("step %d %s: %s", step, checkpoint_split,
                   ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in sorted(scalars.items())
                             if k.split("/", 1)[1] in ("loss", "auc", "ap", "mean_auc")))
      meta["metrics"] = scalars
      for metric, mode in tracked.items():
        if metric.split("/", 1)[0] != checkpoint_split:
          raise ValueError(f"checkpoint metric {metric!r}: only {checkpoint_split!r} is evaluated "
                           "during training")
        value = _flat_value(results, metric)
        if _better(value, best[metric], mode):
          best[metric], best_steps[metric] = value, step
          improved.append(metric)
    meta.update(best=dict(best), best_steps=dict(best_steps))
    checkpoints.save_latest(step, state, meta)  # latest first: a kill here loses no best_*
    for metric in improved:
      checkpoints.save_best(metric, step, state, meta)
    saved_step, saved_time = step, time.monotonic()
    if stop.requested is not None:
      writer.flush()
      name = signal.Signals(stop.requested).name
      raise faults.Interrupted(
          f"stopped by {name} at step {step} of {total_steps}; saved "
          f"{os.path.join(checkpoints.directory, ckpt_lib.LATEST, str(step))}; rerun the "
          "same command to resume", exit_code=128 + stop.requested)
  if pending is not None:
    guard.check(*pending)
  stop.deferred = False
  writer.flush()

  # Final evaluation with the best checkpoint by config.train.checkpoint_metric.
  final = checkpoints.restore_best(config.train.checkpoint_metric, state)
  if final is not None:
    state, final_meta = final
  else:
    final_meta = {"step": int(state.step)}
    logging.warning("no best checkpoint by %s; evaluating the last state",
                    config.train.checkpoint_metric)
  all_results = evaluation.evaluate_splits(
      config, workdir, state, datasets, model_lib, module, loss_stats, eval_step,
      config.eval.splits, step=int(final_meta["step"]), writer=writer)
  writer.close()
  checkpoints.close()
  return all_results
