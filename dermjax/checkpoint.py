"""Orbax checkpoints: the latest state (for resuming) and the best state per tracked metric.

Layout under `directory`:
  latest/<step>/            the most recent state, saved every epoch (and at the last step)
  best_<metric>/<step>/     the state with the best value of <metric> so far ("/" -> "_")
Each checkpoint holds `state` (a pytree of arrays) and `meta` (JSON: the train iterator's
state, best values so far, the metric values at that step, ...).
"""

import base64
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

LATEST = "latest"


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


def _manager(path: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(path), options=options)


class Checkpoints:
  """The latest checkpoint plus one best checkpoint per metric in `metrics`."""

  def __init__(self, directory: str, metrics=()):
    self.directory = directory
    self._latest = _manager(os.path.join(directory, LATEST))
    self._best = {m: _manager(os.path.join(directory, best_dirname(m))) for m in metrics}

  def _save(self, manager, step, state, meta):
    manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(encode_json(meta))), force=True)
    manager.wait_until_finished()

  def save_latest(self, step: int, state, meta: dict):
    self._save(self._latest, step, state, meta)

  def save_best(self, metric: str, step: int, state, meta: dict):
    self._save(self._best[metric], step, state, meta)

  def _restore(self, manager, target):
    step = manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], decode_json(restored["meta"])

  def restore_latest(self, target):
    """(state, meta) of the latest checkpoint, shaped/sharded like `target`; None if none."""
    return self._restore(self._latest, target)

  def restore_best(self, metric: str, target):
    """(state, meta) of the best checkpoint by `metric`; None if none was saved."""
    return self._restore(self._best[metric], target)

  def close(self):
    for manager in [self._latest, *self._best.values()]:
      manager.close()


def run_checkpoint_dir(workdir: str) -> str:
  """The checkpoint folder of a finished dermjax run: best by its config's
  train.checkpoint_metric when there is one, else latest."""
  root = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{workdir}: not a dermjax run (no checkpoints/ folder)")
  metric = None
  config_path = os.path.join(workdir, "config.json")
  if os.path.isfile(config_path):
    with open(config_path) as f:
      metric = json.load(f).get("train", {}).get("checkpoint_metric")
  for name in ([best_dirname(metric)] if metric else []) + [LATEST]:
    path = os.path.join(root, name)
    if os.path.isdir(path) and _manager(path).latest_step() is not None:
      return path
  raise FileNotFoundError(f"{workdir}: no saved checkpoint under {root}")


def run_variables(workdir: str) -> dict:
  """{"params": tree, "batch_stats": tree} (numpy) of a dermjax run's best checkpoint, e.g.
  to graft a trained stage into another model (dermjax.weights.apply_pretrained)."""
  manager = _manager(run_checkpoint_dir(workdir))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  manager.close()
  state = restored["state"]
  to_numpy = lambda tree: jax.tree.map(np.asarray, tree or {})
  return {"params": to_numpy(state["params"]), "batch_stats": to_numpy(state.get("batch_stats"))}


def run_checkpoint(workdir: str) -> tuple[dict, dict]:
  """(state, meta) of the checkpoint run_checkpoint_dir picks: state {"step", "params",
  "batch_stats", ...} as numpy trees, meta the JSON saved with it ("step", "metrics", ...)."""
  manager = _manager(run_checkpoint_dir(workdir))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  manager.close()
  return jax.tree.map(np.asarray, dict(restored["state"])), decode_json(restored["meta"])
