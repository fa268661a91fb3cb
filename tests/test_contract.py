"""The model contract (dermjax/models/__init__.py), for every row of every experiment table.

Each row of each configs/<paper>.py (its ROWS) must: build; run at its paper scale as shapes
only (jax.eval_shape of init, a training apply + loss, and an evaluation apply + eval_arrays +
saliency, then its explain on outputs of those shapes). One row per trainer path
(`trainer_rows`: the model and its metadata input) trains CPU-sized through the real
trainer (dermjax.train.train_and_evaluate) on prepared synthetic data of its layout, then
evaluates (eval_arrays, report) and explains.
Every CPU-distinct row trains through the real train step in tests/test_learning.py. Adding
a paper's table adds its rows here.

Training runs with the networks cut (conftest.narrow_networks: every ResNet / ResNeXt /
DenseNet one block per stage at base width 16, the same block types and taps; VGG-16 one
conv per block and the gaze decoder at 1/8 width): depth and width are repeat counts and
channel numbers, checked at paper scale by the eval_shape test; the trainer's plumbing is
what runs here.
"""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax import config_lib
from dermjax import models
from dermjax import train
from dermjax import steps
from dermjax.data import schema
from dermjax.models import backbones

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
CONTRACT_IMAGES = {"train": 8, "validation": 4, "test": 4}
# ISIC 2019 / 2020 have one official split: test (1/5) and validation (1/8) are carved out of
# it grouped by patient (two images per synthetic patient), which needs more images.
ONE_SPLIT_IMAGES = {"train": 40, "validation": 0, "test": 0}


def table_rows():
  for path in TABLES:
    module = config_lib.config_module(path)
    for row in module.ROWS:
      yield pytest.param(path, row, id=f"{os.path.basename(path)[:-3]}:{row}")


ROWS = list(table_rows())


def distinct_cpu_rows():
  """ROWS grouped by their CPU-sized config: rows that differ only at paper scale (e.g. in
  frozen ImageNet parts) run the same program on CPU, so each group trains once."""
  groups = {}
  for param in ROWS:
    path, row = param.values
    key = config_lib.load_config(path, row).to_json_best_effort(sort_keys=True)
    groups.setdefault(key, []).append((path, row))
  for rows in groups.values():
    path, row = rows[0]
    yield pytest.param(path, row, id=f"{os.path.basename(path)[:-3]}:" + "=".join(r for _, r in rows))


def test_every_table_has_rows_and_a_registered_model():
  assert {os.path.basename(p) for p in TABLES} >= {"gaze.py", "attnmel.py"}
  for param in ROWS:
    path, row = param.values
    assert config_lib.load_config(path, row).model.name in models.MODELS, (path, row)
  for name in models.MODELS:
    models.get(name)   # imports and has the required hooks


# Config fields that change what the trainer and evaluation feed a model: rows that agree on
# them differ only inside the network (tests/test_learning.py trains each).
TRAINER_PATH_FIELDS = ("name", "metadata")


def trainer_rows():
  """distinct_cpu_rows grouped by TRAINER_PATH_FIELDS of config.model; each group is run by
  its row with the most switches on (True fields of config.model, e.g. CIN's A+F+D, gaze's
  decoder and skips; the first in table order on ties); its id: that row, then the rest."""
  groups = {}
  for param in distinct_cpu_rows():
    model = config_lib.load_config(*param.values).model
    key = tuple(repr(model.get(field)) for field in TRAINER_PATH_FIELDS)
    switches = sum(value is True for value in model.values())
    groups.setdefault(key, []).append((switches, param))
  for members in groups.values():
    chosen = max(members, key=lambda member: member[0])[1]   # max keeps the first of ties.
    others = [p.id for _, p in members if p is not chosen]
    yield pytest.param(*chosen.values, id="+".join([chosen.id, *others]))


@pytest.mark.parametrize("path,row", ROWS)
def test_paper_scale_shapes(path, row, prepared_layout, tmp_path):
  """Paper-scale init, training forward + loss, evaluation forward + eval_arrays + saliency
as shapes only, then explain on outputs of those shapes: the row is well formed."""
  from dermjax.data import prepare  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(path, f"{row},paper")
  model_lib = models.get(config.model.name)
  stats_fn = getattr(model_lib, "loss_stats", None)
  stats = stats_fn(prepare.load(prepared_layout(config.data.layout)[1], config.data.layout).stats,
                   config) if stats_fn else {}
  module = model_lib.build(config)
  spec = schema.batch_spec(config.data.image_size, 2, source_size=config.data.source_size)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
  rngs = {name: jax.random.key(i) for i, name in enumerate(("params", "dropout", "sample"))}
  mean = std = np.ones(3, np.float32)

  def forward(batch):
    batch = steps.preprocess(batch, rngs["dropout"], config, mean, std, train=True)
    variables = module.init(rngs, batch, train=False)
    outputs, _ = module.apply(variables, batch, train=True, mutable=["batch_stats"],
                              rngs={"dropout": rngs["dropout"], "sample": rngs["sample"]})
    loss, aux = model_lib.loss(outputs, batch, config, stats)
    return outputs, loss, aux

  def evaluate(batch):
    batch = steps.preprocess(batch, rngs["dropout"], config, mean, std, train=False)
    variables = module.init(rngs, batch, train=False)
    outputs = module.apply(variables, batch, train=False)
    hooks = [getattr(model_lib, hook, None) for hook in ("eval_arrays", "saliency")]
    return outputs, *(hook(outputs, batch, config) if hook else {} for hook in hooks)

  train_outputs, loss, aux = jax.eval_shape(forward, batch)
  assert loss.shape == () and all(v.shape == () for v in aux.values())
  outputs, arrays, maps = jax.eval_shape(evaluate, batch)
  assert all(v.shape[0] == 2 for v in (*arrays.values(), *maps.values())), (arrays, maps)
  assert all(v.ndim == 3 for v in maps.values()), maps
  for out in (train_outputs, outputs):
    if "logits" in out:
      assert out["logits"].shape == (2, max(int(config.model.num_classes), 1))
  explain = getattr(model_lib, "explain", None)
  if explain is not None:   # on random outputs of the evaluation's shapes and a zero host batch,
    rng = np.random.default_rng(0)   # sorted along the last axis: boxes (y0, x0, y1, x1) ordered.
    filled = lambda s: (np.sort(rng.uniform(size=s.shape), axis=-1).astype(s.dtype)
                        if jnp.issubdtype(s.dtype, jnp.floating) else np.zeros(s.shape, s.dtype))
    host = {k: np.zeros(v.shape, v.dtype) for k, v in batch.items()}
    explain(jax.tree.map(filled, outputs), host, host["image"], ["a", "b"], config,
            str(tmp_path))


@pytest.fixture(scope="session")
def prepared_layout(prepared_synthetic):
  """layout -> (raw dir, prepared dir) of a tiny synthetic set, prepared once per session."""
  return lambda layout: prepared_synthetic(
      layout, ONE_SPLIT_IMAGES if layout in ("isic2019", "isic2020") else CONTRACT_IMAGES)


def test_shallow_backbones_keep_taps_and_widths():
  """The cut networks end in the same tap at the same resolution; ResNets with the same channels."""
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  for arch in ("resnet101", "resnext50_32x4d", "densenet121"):
    full, cut = backbones.BACKBONES[arch], backbones.shallow(backbones.BACKBONES[arch])
    assert cut.module is not full.module
    shapes = [jax.eval_shape(lambda x, b=b: b.module().init_with_output(jax.random.key(0), x)[0],
                             image)[b.features].shape for b in (full, cut)]
    same = slice(None) if arch.startswith("res") else slice(0, 3)
    assert shapes[0][same] == shapes[1][same], (arch, shapes)
    assert arch.startswith("res") or shapes[1][3] < shapes[0][3], (arch, shapes)   # it is cut.


@pytest.mark.usefixtures("narrow_networks")
@pytest.mark.parametrize("path,row", list(trainer_rows()))
def test_row_trains_evaluates_and_explains(path, row, prepared_layout, tmp_path):
  config = config_lib.load_config(path, row)
  raw, prepared = prepared_layout(config.data.layout)
  config.data.dir, config.data.prepared_dir = raw, prepared
  config.data.num_folds = 2          # as prepared above.
  config.data.batch_size = config.data.eval_batch_size = 2
  config.data.num_threads = 1
  config.train.num_epochs = 1
  config.train.max_steps = 1
  config.train.log_every_steps = 1
  config.train.keep_best = ()        # latest + best by checkpoint_metric: VGG rows are 1.6 GB each.
  config.eval.num_visualizations = 1
  model_lib = models.get(config.model.name)

  results = train.train_and_evaluate(config, str(tmp_path))

  for split in config.eval.splits:
    with open(tmp_path / "results" / f"{split}.json") as f:
      written = json.load(f)
    assert np.isfinite(written["losses"]["loss"]), (split, written["losses"])
    has_logits = os.path.exists(tmp_path / "predictions" / f"{split}.npz")
    assert ("diagnosis" in written) == has_logits
    if getattr(model_lib, "report", None) is not None:
      assert "report" in results[split]
    if getattr(model_lib, "explain", None) is not None:
      # explain ran (a row without spatial maps, e.g. VGG-16's fc head, may write nothing).
      assert os.path.isdir(tmp_path / "explanations" / split), f"{row}: explain did not run"
