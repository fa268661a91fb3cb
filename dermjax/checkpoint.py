"""Orbax checkpoints: the latest state (for resuming) and the best state per tracked metric.

Layout under `directory`:
  latest/<step>/            the last 2 states, saved every train.checkpoint_every_steps /
                            _minutes, at epoch ends and at the last step
  best_<metric>/<step>/     the state with the best value of <metric> so far ("/" -> "_")
  corrupt/<name>-<step>/    unreadable checkpoints, moved aside by restore (never deleted)
  superseded/<name>-<step>/ checkpoints newer than the step a rerun resumed from
  diverged/<name>-<step>/   checkpoints whose parameters produced the loss that stopped a
                            diverged run (dermjax.divergence): never named as good
Each checkpoint holds `state` (a pytree of arrays) and `meta` (JSON: the train iterator's
state, best values and steps so far, the metric values at that step, the config it was
trained with). Orbax writes each step to <step>.orbax-checkpoint-tmp-* and renames it, so
a step folder is complete or absent; leftovers of a killed save are removed at start.
"""

import base64
import json
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dermjax import faults

LATEST = "latest"
CORRUPT = "corrupt"          # unreadable steps, moved aside at restore
SUPERSEDED = "superseded"    # steps newer than the one a rerun resumed from
DIVERGED = "diverged"        # steps whose parameters produced a diverged loss
TMP_MARK = ".orbax-checkpoint-tmp"


def best_dirname(metric: str) -> str:
  return "best_" + metric.replace("/", "_")


def encode_json(value):
  """bytes (e.g. a grain iterator state) -> JSON-safe, recursively; see decode_json."""
  if isinstance(value, bytes):
    return {"__bytes__": base64.b64encode(value).decode("ascii")}
  if isinstance(value, dict):
    return {str(k): encode_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [encode_json(v) for v in value]
  return value


def decode_json(value):
  if isinstance(value, dict):
    if set(value) == {"__bytes__"}:
      return base64.b64decode(value["__bytes__"])
    return {k: decode_json(v) for k, v in value.items()}
  if isinstance(value, list):
    return [decode_json(v) for v in value]
  return value


def _manager(path: str, max_to_keep: int = 1) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(path), options=options)


def _first_line(exc) -> str:
  """A one-line reason for an unreadable checkpoint (the innermost message's first line)."""
  inner = exc
  while inner.__cause__ is not None:
    inner = inner.__cause__
  text = f"{type(inner).__name__}: {inner}".strip().splitlines()[0]
  return text[:300]


def _shape_mismatch(step_dir, target):
  """How the array shapes saved in `step_dir` (state/_METADATA) differ from `target`'s, or
  None when they agree or cannot be read (then a failed restore means a damaged step)."""
  try:
    with open(os.path.join(step_dir, "state", "_METADATA")) as f:
      saved = [v["value_metadata"] for v in json.load(f)["tree_metadata"].values()]
    saved = sorted(tuple(v["write_shape"]) for v in saved)
  except Exception:  # pylint: disable=broad-except
    return None
  wanted = sorted(tuple(np.shape(x)) for x in jax.tree.leaves(target))
  if saved == wanted:
    return None
  if len(saved) != len(wanted):
    return f"{len(saved)} arrays saved, {len(wanted)} expected"
  first = next(i for i, (a, b) in enumerate(zip(saved, wanted)) if a != b)
  return f"an array of shape {saved[first]} saved where {wanted[first]} is expected"


def remove_stale_temporaries(directory: str) -> list:
  """Deletes the *.orbax-checkpoint-tmp* folders an interrupted save left one level below
  `directory` (in latest/ and best_*/); returns their paths."""
  stale = _temporaries(directory)
  for path in stale:
    shutil.rmtree(path, ignore_errors=True)
    logging.warning("removed the unfinished checkpoint %s (a save was interrupted)", path)
  return stale


def _temporaries(directory: str) -> list:
  if not os.path.isdir(directory):
    return []
  found = []
  for name in sorted(os.listdir(directory)):
    sub = os.path.join(directory, name)
    if os.path.isdir(sub) and name not in (CORRUPT, SUPERSEDED, DIVERGED):
      found += [os.path.join(sub, e) for e in sorted(os.listdir(sub)) if TMP_MARK in e]
  return found


class Checkpoints:
  """The last `keep_latest` states (for resuming) plus one best state per metric.

  Only orbax writes inside latest/ and best_*/ (temporary folder, then rename). Steps that
  cannot be read are moved to corrupt/, steps of an abandoned future to superseded/, steps
  of a diverged run to diverged/.
  """

  def __init__(self, directory: str, metrics=(), keep_latest: int = 2):
    self.directory = directory
    remove_stale_temporaries(directory)
    self._latest = _manager(os.path.join(directory, LATEST), keep_latest)
    self._best = {m: _manager(os.path.join(directory, best_dirname(m))) for m in metrics}

  def _managers(self):
    return {LATEST: self._latest, **{best_dirname(m): v for m, v in self._best.items()}}

  def _save(self, name, manager, step, state, meta):
    if int(step) in manager.all_steps():
      logging.info("checkpoint %s/%d exists; kept as it is", name, step)
      return
    try:
      manager.save(int(step), force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(encode_json(meta))))
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      error = faults.storage_error(e, f"saving checkpoint {name}/{step} failed")
      for _ in range(20):  # tensorstore threads may still be writing into it for a moment
        remove_stale_temporaries(self.directory)
        time.sleep(0.1)
        if not _temporaries(self.directory):
          break
      if error is not None:
        raise error from None
      raise

  def save_latest(self, step: int, state, meta: dict):
    self._save(LATEST, self._latest, step, state, meta)

  def save_best(self, metric: str, step: int, state, meta: dict):
    self._save(best_dirname(metric), self._best[metric], step, state, meta)

  def steps(self, metric=None) -> list:
    """Saved steps of `latest` (metric None) or of best_<metric>, ascending."""
    return sorted((self._latest if metric is None else self._best[metric]).all_steps())

  def _move_aside(self, name, manager, step, kind):
    """Moves <name>/<step> to <kind>/<name>-<step>[-n] (kept, out of orbax's view)."""
    target_dir = os.path.join(self.directory, kind)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{name}-{step}")
    n = 1
    while os.path.exists(target):
      target, n = os.path.join(target_dir, f"{name}-{step}-{n}"), n + 1
    os.rename(os.path.join(self.directory, name, str(step)), target)
    manager.reload()
    return target

  def _restore(self, name, manager, target, meta_only=False):
    """Newest readable step of one manager: (state or None, meta); unreadable steps are
    reported in one warning line each and moved to corrupt/. None if nothing is readable."""
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        with faults.quiet_failures():
          if meta_only:
            restored = manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))
            return None, decode_json(restored["meta"])
          abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
          restored = manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored["state"], decode_json(restored["meta"])
      except Exception as e:  # pylint: disable=broad-except
        mismatch = None if meta_only else _shape_mismatch(
            os.path.join(self.directory, name, str(step)), target)
        if mismatch:  # Readable, but not this model's: no reason to move it.
          raise faults.RunError(
              f"checkpoint {name}/{step} in {self.directory} holds another model's state "
              f"({mismatch}); use the config it was trained with or another --workdir",
              exit_code=2) from None
        moved = self._move_aside(name, manager, step, CORRUPT)
        logging.warning("checkpoint %s/%d is unreadable (%s); moved to %s", name, step,
                        _first_line(e), moved)
    return None

  def latest_meta(self):
    """meta of the newest latest step whose meta reads (None if none); for checks made
    before the state exists (the stored config)."""
    restored = self._restore(LATEST, self._latest, None, meta_only=True)
    return None if restored is None else restored[1]

  def restore_latest(self, target):
    """(state, meta) of the newest readable latest step, shaped/sharded like `target`;
    None if there is none (unreadable ones moved to corrupt/)."""
    return self._restore(LATEST, self._latest, target)

  def restore_best(self, metric: str, target):
    """(state, meta) of the best checkpoint by `metric`; None if none is readable."""
    return self._restore(best_dirname(metric), self._best[metric], target)

  def supersede_after(self, step: int) -> list:
    """Moves every latest / best step newer than `step` (the one resumed; 0: a fresh
    start) to superseded/: kept as a record, never overwritten by the rerun."""
    return self._move_newer(step, SUPERSEDED, "is newer than the resumed step %d")

  def set_aside_diverged(self, first_bad: int) -> list:
    """Moves every latest / best step >= `first_bad` (their parameters produced a diverged
    loss) to diverged/, so that the newest latest left is a good one."""
    return self._move_newer(first_bad - 1, DIVERGED,
                            "holds parameters that diverged after step %d")

  def _move_newer(self, step, kind, why):
    moved = []
    for name, manager in self._managers().items():
      for newer in [s for s in manager.all_steps() if s > step]:
        moved.append(self._move_aside(name, manager, newer, kind))
        logging.warning("checkpoint %s/%d " + why + "; moved to %s", name, newer, step,
                        moved[-1])
    return moved

  def close(self):
    for manager in self._managers().values():
      manager.close()


def run_checkpoint_dir(workdir: str) -> str:
  """The checkpoint folder of a finished dermjax run: best by its config's
  train.checkpoint_metric when there is one, else latest. FileNotFoundError if none."""
  root = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{workdir} is not a dermjax run (no checkpoints/ folder)")
  metric = None
  config_path = os.path.join(workdir, "config.json")
  if os.path.isfile(config_path):
    try:
      with open(config_path) as f:
        metric = json.load(f).get("train", {}).get("checkpoint_metric")
    except (ValueError, AttributeError):
      metric = None  # An unreadable config.json is reported by whoever reads the config.
  for name in ([best_dirname(metric)] if metric else []) + [LATEST]:
    path = os.path.join(root, name)
    if os.path.isdir(path) and _manager(path).latest_step() is not None:
      return path
  raise FileNotFoundError(f"{workdir} holds no saved checkpoint under {root} (not a finished "
                          "run: rerun its training command to resume it)")


def _restore_run(workdir: str, **items):
  """{item: restored} of the newest step in run_checkpoint_dir(workdir)."""
  manager = _manager(run_checkpoint_dir(workdir))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(**items))
  manager.close()
  return restored


def run_meta(workdir: str) -> dict:
  """The meta JSON of the checkpoint run_checkpoint_dir picks ("step", "config", ...)."""
  return decode_json(_restore_run(workdir, meta=ocp.args.JsonRestore())["meta"])


def run_variables(workdir: str) -> dict:
  """{"params": tree, "batch_stats": tree} (numpy) of a dermjax run's best checkpoint, e.g.
  to graft a trained stage into another model (dermjax.weights.apply_pretrained)."""
  state = _restore_run(workdir, state=ocp.args.StandardRestore())["state"]
  to_numpy = lambda tree: jax.tree.map(np.asarray, tree or {})
  return {"params": to_numpy(state["params"]), "batch_stats": to_numpy(state.get("batch_stats"))}


def run_checkpoint(workdir: str) -> tuple[dict, dict]:
  """(state, meta) of the checkpoint run_checkpoint_dir picks: state {"step", "params",
  "batch_stats", ...} as numpy trees, meta the JSON saved with it ("step", "metrics", ...)."""
  restored = _restore_run(workdir, state=ocp.args.StandardRestore(),
                          meta=ocp.args.JsonRestore())
  return jax.tree.map(np.asarray, dict(restored["state"])), decode_json(restored["meta"])
