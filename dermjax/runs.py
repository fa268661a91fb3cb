"""A finished run, ready for inference: its config, model, best checkpoint and the input
normalisation it was trained with (dermjax.predict, dermjax.evaluate)."""

import dataclasses
import json
import os

import numpy as np
from absl import logging

from dermjax import checkpoint
from dermjax import config_lib
from dermjax import faults
from dermjax import input_pipeline
from dermjax import models
from dermjax.data import normalization as normalization_lib
from dermjax.data import prepare

# Where a run records its preprocessing constants (written by dermjax.evaluation).
NORMALIZATION = os.path.join("results", "normalization.json")


@dataclasses.dataclass
class Run:
  """A finished run, ready for inference. variables: {"params", "batch_stats"} (numpy);
  mean, std: float32 [3] (0-255) of its normalisation `normalization` (mode: "dataset" |
  "imagenet" | "fixed"); step / meta: of the restored checkpoint."""
  workdir: str
  config: object
  model_lib: object
  module: object
  variables: dict
  mean: np.ndarray
  std: np.ndarray
  class_names: tuple
  step: int
  meta: dict
  normalization: str = "dataset"


def normalization(workdir, config) -> dict:
  """{"mode", "mean", "std", "class_names"} of a run: results/normalization.json (a record
  without "mode" is "dataset"), or (runs written before it existed) config.data.normalization
  with the stats of the prepared dataset its config names."""
  path = os.path.join(workdir, NORMALIZATION)
  if os.path.isfile(path):
    with open(path) as f:
      record = json.load(f)
    return {**record, **normalization_lib.from_record(record)}
  c = config.data
  stats = None
  if c.get("normalization", "dataset") == "dataset":
    raw = c.dir or input_pipeline.synthetic_dir(c, workdir)
    try:
      stats = prepare.load(c.prepared_dir or os.path.join(raw, "prepared"), c.layout).stats
    except FileNotFoundError:
      raise faults.RunError(f"{workdir} has no {NORMALIZATION} (the input mean / std the model "
                            f"was trained with) and its prepared {c.layout} dataset is gone "
                            f"from {raw}: copy the whole run folder", exit_code=2) from None
  return {**normalization_lib.normalization(c, stats),
          "class_names": list(input_pipeline.class_names(c.layout, c.target))}


def load_run(workdir: str, config=None) -> Run:
  """The run in `workdir`: its config (config.json, else the checkpoint's; or `config`), model
  and the checkpoint the trainer evaluates at the end (best by train.checkpoint_metric, else
  latest). Raises RunError (exit status 2) when the folder is no finished run or its
  config.json names another model than the one its checkpoint was trained as."""
  workdir = os.path.abspath(workdir)
  config = config_lib.load_run_config(workdir) if config is None else config
  try:
    state, meta = checkpoint.run_checkpoint(workdir)
  except FileNotFoundError as e:
    raise faults.RunError(str(e), exit_code=2) from None
  trained = (meta.get("config") or {}).get("model", {})
  if trained and trained.get("name") != config.model.name:
    raise faults.RunError(
        f"{workdir}: its checkpoint (step {meta.get('step')}) was trained as model "
        f"{trained.get('name')!r}, but the config (config.json or --config.model.name) says "
        f"{config.model.name!r}; config.json belongs to another run (remove it to use the "
        "checkpoint's own config)", exit_code=2)
  saved, now = (config_lib.flatten({"model": m}) for m in (
      trained, config_lib.config_dict(config)["model"]))
  for key in sorted(set(saved) & set(now)):
    if saved[key] != now[key]:
      logging.warning("the checkpoint was trained with %s = %r, the config says %r", key,
                      saved[key], now[key])
  try:
    model_lib = models.get(config.model.name)
  except ValueError as e:
    raise faults.RunError(f"{workdir}: {e}", exit_code=2) from None
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  norm = normalization(workdir, config)
  return Run(workdir=workdir, config=config, model_lib=model_lib, module=model_lib.build(config),
             variables=variables, mean=np.asarray(norm["mean"], np.float32).reshape(3),
             std=np.asarray(norm["std"], np.float32).reshape(3),
             class_names=tuple(norm["class_names"]), step=int(meta.get("step", state["step"])),
             meta=meta, normalization=norm["mode"])
