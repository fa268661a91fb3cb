"""Every distinct table row learns: a wiring check through the real train step.

Each CPU-distinct row of every configs/*.py table (tests/test_contract.distinct_cpu_rows)
trains on one fixed set of 16 prepared synthetic images (easy preset, 32 px; 64 px for
AlexNet, which needs it), full batch, the rows shuffled anew each step, augmentation off,
Adam on every group the row trains (groups of rate 0 stay frozen). After a few steps:
  - the training loss fell by a large fraction (first step -> mean of the last steps);
  - every parameter the row trains moved and every frozen one stayed bit-identical (a
    stop_gradient in the wrong place, or a frozen group that should train, shows here);
  - the training AUC of the last step's own forward (read out of the train step through the
    loss's metrics) is 1.0; for the stage-1 segmenter (no logits) the lesion Jaccard rose.
The rows are reshuffled every step, so labels that are misaligned with their images (a
permutation in the loss or the pipeline) cannot be memorised and the AUC stays below 1.

Networks are cut for speed (conftest.narrow_networks): ResNets / DenseNets one block per
stage at base width 16, VGG-16 one conv per block and the gaze decoder at 1/8 of their
widths, AlexNet's convs at 1/4.
"""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_contract
from dermjax import config_lib
from dermjax import input_pipeline
from dermjax import models
from dermjax import steps
from dermjax.metrics import diagnosis

IMAGES = {"train": 16, "validation": 4, "test": 4}
ONE_SPLIT = {"train": 40, "validation": 0, "test": 0}   # ISIC 2020: test / validation carved.
STEPS = 30
LOSS_FALL = 0.5        # the loss of the last steps is at most this fraction of the first.
# Per table / row (the more specific wins): Adam's rate, the image size, the loss fall.
#   fc heads (4096-wide, 7 x 7 x C inputs) diverge at Adam 3e-3: 3e-4; CIN's correlation
#   block needs a map of at least 2 x 2 (ResNet-18 at 64 px; at 32 px P = 1 has no gradient);
#   AlexNet needs 64 px; gaze's loss holds slowly falling segmentation / structure terms; the
#   plain VGG-16 (no BN) of noskip_nobn trains slowly from scratch (30 steps: x0.86 at 1e-3,
#   x0.81 at 2e-3) and oscillates above 2e-3.
SETTINGS = {
    "": dict(rate=3e-3, size=32, fall=LOSS_FALL),
    "gaze": dict(rate=1e-2, fall=0.6), "gaze:vgg": dict(rate=3e-4),
    "gaze:attconvlstm": dict(rate=3e-4), "gaze:noskip_nobn": dict(rate=2e-3, fall=0.85),
    "attnmel:vgg16": dict(rate=3e-4),
    "masll:densenet121": dict(rate=1e-2),
    "cin": dict(size=64),
    "zoome:alexnet": dict(size=64), "zoome:alexnet_meta": dict(size=64),
}


def settings(table, row):
  """SETTINGS merged for `table` ("gaze") and `row`."""
  out = dict(SETTINGS[""])
  for key in (table, f"{table}:{row}"):
    out.update(SETTINGS.get(key, {}))
  return out


@pytest.fixture(scope="module")
def learning_data(prepared_synthetic):
  """layout -> (raw dir, prepared dir) of 16+ easy synthetic images, prepared once."""
  return lambda layout: prepared_synthetic(
      layout, ONE_SPLIT if layout in ("isic2019", "isic2020") else IMAGES, seed=1)


def learning_config(path, row, data, *, rate, size):
  """The row's CPU config on the fixed set: full batch, no augmentation, Adam at one rate on
  every group the row trains."""
  config = config_lib.load_config(path, row)
  raw, prepared = data(config.data.layout)
  d = config.data
  d.dir, d.prepared_dir, d.num_folds, d.num_threads = raw, prepared, 2, 1
  d.image_size = d.resize_size = size
  d.batch_size = d.eval_batch_size = 16
  d.sampling = "none"
  d.augment.update(rotation="none", hflip=False, vflip=False, zoom=None, crop_size=None)
  o = config.optim
  o.name, o.learning_rate, o.weight_decay, o.decay_every_epochs = "adam", rate, 0.0, 0
  o.groups = {g: (regex, r and rate) for g, (regex, r) in o.groups.items()}
  return config


def probed(model_lib, size: int):
  """model_lib whose loss also reports, per example (by its batch index < `size`), the
  training forward's score ("probe/score_<i>") or, for a segmenter, the batch's lesion
  Jaccard ("probe/jaccard"): the train step's own outputs, no second program."""

  def loss(outputs, batch, config, stats):
    value, aux = model_lib.loss(outputs, batch, config, stats)
    probe = {}
    if "logits" in outputs:
      logits = outputs["logits"].astype(jnp.float32)
      score = (jax.nn.sigmoid(logits[:, 0]) if logits.shape[1] == 1
               else jax.nn.softmax(logits, axis=-1)[:, 1])
      by_index = jnp.zeros(size).at[batch["index"]].set(score)
      probe = {f"probe/score_{i}": by_index[i] for i in range(size)}
    elif "lesion_map" in outputs:
      pred, truth = outputs["lesion_map"] >= 0.5, batch["masks"][..., 0] > 0.5
      probe = {"probe/jaccard": jnp.sum(pred & truth) / jnp.maximum(jnp.sum(pred | truth), 1)}
    return value, {**aux, **probe}

  return types.SimpleNamespace(loss=loss)


def run_learning(config, num_steps=STEPS):
  """Trains `num_steps` steps on the first 16 training images, reshuffled every step -> dict
  of losses [num_steps], the last step's probe metrics, params before / after, the trainable mask
  and the labels by index."""
  mesh = steps.create_mesh()
  datasets = input_pipeline.create_datasets(config.data, mesh=mesh)
  batch = jax.tree.map(np.asarray, next(iter(datasets.eval("train"))))
  size = len(batch["label"])
  model_lib = models.get(config.model.name)
  module = model_lib.build(config)
  stats_fn = getattr(model_lib, "loss_stats", None)
  stats = stats_fn(datasets.stats, config) if stats_fn else {}
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  state, tx, mask = steps.create_train_state(config, module, shapes, mean=datasets.mean,
                                             std=datasets.std, steps_per_epoch=1, mesh=mesh)
  before = jax.tree.map(np.asarray, state.params)
  # One program run num_steps times: compiled at XLA's usual optimisation level, not the
  # suite's compile-fast level 0 (conftest), which runs these steps ~2x slower.
  step = jax.jit(steps.make_train_step(module, probed(model_lib, size), tx, mask, config, stats,
                                       datasets.mean, datasets.std),
                 compiler_options={"xla_backend_optimization_level": 2})
  rng = np.random.default_rng(0)
  losses, first = [], None
  for _ in range(num_steps):
    order = rng.permutation(size)
    state, metrics = step(state, {k: v[order] for k, v in batch.items()})
    metrics = {k: float(v.compute()) for k, v in metrics.items()}
    losses.append(metrics["loss"])
    first = first or metrics
  labels = np.zeros(size, np.int32)
  labels[batch["index"]] = batch["label"]
  return {"losses": np.asarray(losses), "first": first, "last": metrics, "before": before,
          "after": jax.tree.map(np.asarray, state.params), "mask": mask, "labels": labels}


def check_learned(run, fall=LOSS_FALL):
  """Assertion messages (empty: the row learned)."""
  problems = []
  losses = run["losses"]
  late = float(np.mean(losses[-3:]))
  if not late <= fall * losses[0]:
    problems.append(f"loss {losses[0]:.4f} -> {late:.4f} (not below {fall} x the first)")
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
  before, after, mask = flat(run["before"]), flat(run["after"]), flat(run["mask"])
  name = jax.tree_util.keystr
  still = [name(k) for k in before if mask[k] and np.array_equal(before[k], after[k])]
  moved = [name(k) for k in before if not mask[k] and not np.array_equal(before[k], after[k])]
  if still:
    problems.append(f"{len(still)} trained parameters never moved, e.g. {still[:4]}")
  if moved:
    problems.append(f"{len(moved)} frozen parameters moved, e.g. {moved[:4]}")
  last = run["last"]
  if "probe/score_0" in last:
    scores = np.array([last[f"probe/score_{i}"] for i in range(len(run["labels"]))])
    auc = diagnosis.binary_metrics(scores, (run["labels"] > 0).astype(int))["auc"]
    if auc < 1.0:
      problems.append(f"training AUC {auc:.3f} < 1")
  if "probe/jaccard" in last and not last["probe/jaccard"] >= run["first"]["probe/jaccard"] + 0.2:
    problems.append(f"lesion Jaccard {run['first']['probe/jaccard']:.3f} -> "
                    f"{last['probe/jaccard']:.3f} (rose by less than 0.2)")
  return problems


@pytest.mark.usefixtures("narrow_networks")
@pytest.mark.parametrize("path,row", list(test_contract.distinct_cpu_rows()))
def test_row_learns(path, row, learning_data):
  table = os.path.basename(path)[:-3]
  chosen = settings(table, row.split("=")[0])
  config = learning_config(path, row, learning_data, rate=chosen["rate"], size=chosen["size"])
  run = run_learning(config)
  problems = check_learned(run, chosen["fall"])
  assert not problems, f"{row}: " + "; ".join(problems) + f"; losses {np.round(run['losses'], 4)}"
