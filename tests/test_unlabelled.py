"""Images without a diagnosis (label -1, e.g. the official ISIC 2018 Task 1-2 layout, where
no image has a Task 3 label): every model's diagnosis loss leaves them out, the gaze model
still trains its segmentation and structure heads on them, and a whole run on such data
finishes with finite losses."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batches
from dermjax import config_lib
from dermjax import losses
from dermjax import models
from dermjax import train
from dermjax.data import isic
from dermjax.data import schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, SIZE, STEPS = 4, 8, 3
LABELS = np.array([1, 0, -1, 1])     # row 2 has no diagnosis
KEEP = LABELS >= 0
# (table, row): every model module with a diagnosis loss.
ROWS = [("gaze.py", "thesis"), ("gaze.py", "vgg"), ("attnmel.py", "lesion"),
        ("masll.py", "masll_resnet101"), ("zoome.py", "zoome"), ("cin.py", "cin")]
DIAGNOSIS_TERMS = ("loss_diag", "focal", "cross_entropy", "classification")


def _outputs(config, rng):
  """The outputs each model's loss reads, random, for B rows."""
  num = max(int(config.model.num_classes), 1)
  out = {"logits": jnp.asarray(rng.normal(size=(B, num)), jnp.float32)}
  name = config.model.name
  if name == "attnmel":
    out.update({a: jnp.asarray(rng.random((B, 2, 2)), jnp.float32)
                for a in ("attention3", "attention4")})
  if name == "gaze":
    out["masks"] = jnp.asarray(rng.random((B, STEPS, SIZE, SIZE)), jnp.float32)
    out["structure_logits"] = jnp.asarray(rng.normal(size=(B, STEPS, schema.NUM_STRUCTURES)),
                                          jnp.float32)
  if name == "cin":
    out.update(class_logits_a=jnp.asarray(rng.normal(size=(B, 2)), jnp.float32),
               class_logits_b=jnp.asarray(rng.normal(size=(B, 2)), jnp.float32),
               pair_logit=jnp.asarray(rng.normal(size=(B,)), jnp.float32),
               pair_perm=jnp.asarray([1, 2, 3, 0]))
  if name == "masll":   # the SLL box (top, left, bottom, right), whose area the loss logs
    out["box"] = jnp.tile(jnp.asarray([[0.1, 0.2, 0.7, 0.9]], jnp.float32), (B, 1))
  return out


def _batch(labels, valid=None):
  masks = np.zeros((B, SIZE, SIZE, 1 + schema.NUM_ATTRIBUTES), np.uint8)
  masks[:, 2:6, 2:6, 0] = 1
  return batches.model_batch(B, SIZE, label=labels, melanoma=np.maximum(labels, 0), masks=masks,
                             valid=np.ones(B) if valid is None else valid)


def _rows(tree, keep):
  return jax.tree.map(lambda x: x[keep] if getattr(x, "ndim", 0) and x.shape[0] == B else x, tree)


@pytest.mark.parametrize("table,row", ROWS, ids=[f"{t[:-3]}:{r}" for t, r in ROWS])
def test_diagnosis_loss_leaves_unlabelled_rows_out(table, row):
  config = config_lib.load_config(os.path.join(REPO, "configs", table), row)
  model_lib = models.get(config.model.name)
  stats = {}
  if config.model.name == "cin":
    stats = {"class_weights": jnp.asarray([1.0, 2.0])}
  outputs = _outputs(config, np.random.default_rng(0))
  loss = jax.jit(lambda outputs, batch: model_lib.loss(outputs, batch, config, stats))
  total, metrics = loss(outputs, _batch(LABELS))
  assert np.isfinite(float(total)) and all(np.isfinite(float(v)) for v in metrics.values())
  term = next(t for t in DIAGNOSIS_TERMS if t in metrics)
  if config.model.name == "cin":   # pairs index the batch: compare with a padding row instead
    _, expected = loss(outputs, _batch(np.where(KEEP, LABELS, 0), valid=KEEP * 1.0))
  else:
    _, expected = loss(_rows(outputs, KEEP), {k: v[KEEP] for k, v in _batch(LABELS).items()})
  np.testing.assert_allclose(float(metrics[term]), float(expected[term]), rtol=1e-5)


def test_focal_loss_masks_unlabelled_rows_and_gaze_keeps_their_masks():
  logits = jnp.asarray([[0.3], [-1.2], [2.0]])
  with_unlabelled = losses.focal_loss(logits, jnp.asarray([1, 0, -1]), gamma=2.0)
  assert with_unlabelled == pytest.approx(float(losses.focal_loss(logits[:2], jnp.asarray([1, 0]),
                                                                   gamma=2.0)), rel=1e-6)
  assert float(losses.focal_loss(logits, jnp.asarray([-1, -1, -1]), gamma=2.0)) == 0.0
  # The gaze structure terms still see the unlabelled row: its segmentation loss moves
  # when only that row's masks change.
  config = config_lib.load_config(os.path.join(REPO, "configs", "gaze.py"), "thesis")
  gaze = models.get("gaze")
  outputs = _outputs(config, np.random.default_rng(1))
  all_unlabelled = np.full(B, -1)
  loss = jax.jit(lambda outputs: gaze.loss(outputs, _batch(all_unlabelled), config, {})[1])
  before = loss(outputs)
  after = loss(dict(outputs, masks=outputs["masks"].at[2].set(1.0)))
  assert float(before["loss_diag"]) == 0.0 and np.isfinite(float(before["loss"]))
  assert float(after["loss_seg"]) != pytest.approx(float(before["loss_seg"]))


@pytest.mark.slow
@pytest.mark.usefixtures("narrow_networks")   # about the data and the losses, not widths
def test_gaze_trains_on_the_official_isic2018_task12_layout(synthetic_isic, tmp_path):
  """ISIC 2018 Task 1-2 without Task 3 labels (as published: no Task 1-2 image has one):
  every record has label -1; the gaze model trains (segmentation + structures) to the
  end with finite losses, and its results carry no diagnosis number."""
  raw = str(tmp_path / "raw")
  shutil.copytree(synthetic_isic("isic2018", {"train": 8, "validation": 4, "test": 4},
                                 min_side=32, max_side=40), raw)
  for name in os.listdir(raw):
    if name.startswith("ISIC2018_Task3_"):
      shutil.rmtree(os.path.join(raw, name))
  examples, problems = isic.list_examples("isic2018", raw)
  assert not problems and {e.label for e in examples} == {-1}
  config = config_lib.load_config(os.path.join(REPO, "configs", "gaze.py"), "thesis")
  config.data.dir, config.data.layout = raw, "isic2018"
  config.data.image_size, config.data.resize_size = 32, 37   # VGG-16 pools 32 px to 1 x 1
  config.data.batch_size = config.data.eval_batch_size = 4
  config.data.num_threads = 1
  config.model.timesteps = 2
  config.train.keep_best = ()
  config.train.num_epochs, config.train.max_steps, config.train.log_every_steps = 1, 2, 1
  config.eval.num_visualizations = 0
  config.eval.submission = ""
  train.train_and_evaluate(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "tensorboard" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  steps = [r for r in rows if "train/loss" in r]
  assert len(steps) == 2 and all(np.isfinite(r["train/loss"]) for r in steps)
  assert all(r["train/loss_diag"] == 0.0 and r["train/loss_seg"] > 0 for r in steps)
  for split in config.eval.splits:
    with open(tmp_path / "run" / "results" / f"{split}.json") as f:
      result = json.load(f)
    assert np.isfinite(result["losses"]["loss"]) and result["diagnosis"]["num_examples"] == 0
    assert "seg_map" in result["report"]
