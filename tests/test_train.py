"""Trainer: train step, over-fitting a tiny batch, frozen groups, end-to-end resume."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import batches
from dermjax import config_lib
from dermjax import models
from dermjax import train
from dermjax import steps
from dermjax.data import schema

import tiny_model  # tests/ is on sys.path (rootdir-relative import under pytest).

SIZE = 32


def tiny_config(**train_overrides):
  config = config_lib.base_config()
  config.model.name = "tiny"
  config.model.frozen_encoder = False
  config.data.image_size = SIZE
  config.data.resize_size = SIZE
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.data.num_threads = 1
  config.data.synthetic_num_images = {"train": 16, "validation": 8, "test": 8}
  config.data.augment = ml_collections.ConfigDict(dict(
      rotation=True, max_rotation_deg=180.0, hflip=True, vflip=True, zoom=None, fill="reflect"))
  config.loss.focal_gamma = 0.0
  config.optim.learning_rate = 1e-2
  config.train.update(train_overrides)
  return config


def host_batch(batch_size=8, seed=0):
  """A hand-made uint8 host batch whose label is readable from the image brightness."""
  rng = np.random.default_rng(seed)
  label = np.arange(batch_size, dtype=np.int32) % 2
  image = rng.integers(0, 100, size=(batch_size, SIZE, SIZE, 3)).astype(np.uint8)
  image[label == 1] += 120
  return batches.host_batch(batch_size, SIZE, image=image, label=label, melanoma=label,
                            has_lesion_mask=np.zeros(batch_size), has_attributes=np.zeros(batch_size))


def _shapes(batch):
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


def setup(config, batch):
  mesh = steps.create_mesh()
  module = tiny_model.build(config)
  mean, std = np.full(3, 100.0, np.float32), np.full(3, 60.0, np.float32)
  state, tx, mask = steps.create_train_state(config, module, _shapes(batch), mean=mean, std=std,
                                             steps_per_epoch=2, mesh=mesh)
  step = jax.jit(steps.make_train_step(module, tiny_model, tx, mask, config, {}, mean, std))
  return state, step


def test_train_step_shapes_and_metrics():
  config = tiny_config()
  batch = host_batch()
  state, step = setup(config, batch)
  state, metrics = step(state, batch)
  assert int(state.step) == 1
  assert set(metrics) == {"loss", "grad_norm", "applied", "focal"}
  assert float(metrics["applied"].compute()) == 1.0
  assert np.isfinite(float(metrics["loss"].compute()))
  assert "batch_stats" not in jax.tree.leaves(state.params)  # BN stats kept apart from params.
  assert state.batch_stats["encoder_bn"]["mean"].shape == (4,)


def test_loss_falls_when_overfitting_a_tiny_batch():
  config = tiny_config()
  config.data.augment = None
  batch = host_batch()
  state, step = setup(config, batch)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"].compute()))
  assert losses[-1] < 0.5 * losses[0], losses


def test_group_with_lr_zero_stays_bit_identical():
  config = tiny_config()
  config.model.frozen_encoder = True
  config.optim.groups = ml_collections.ConfigDict(dict(encoder=("^encoder_", 0.0)))
  batch = host_batch()
  state, step = setup(config, batch)
  before = jax.tree.map(np.array, state.params)
  bn_before = jax.tree.map(np.array, state.batch_stats)
  for _ in range(2):
    state, _ = step(state, batch)
  after = jax.tree.map(np.array, state.params)
  for name in ("encoder_conv", "encoder_bn"):
    for leaf_before, leaf_after in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])):
      np.testing.assert_array_equal(leaf_before, leaf_after)
  # The frozen BN ran with running averages, so its statistics did not move either.
  jax.tree.map(np.testing.assert_array_equal, bn_before, jax.tree.map(np.array, state.batch_stats))
  assert not np.array_equal(before["head_dense"]["kernel"], after["head_dense"]["kernel"])
  assert not jax.tree.leaves(state.opt_state.inner_states["encoder"].inner_state)


def test_eval_step_sums_over_valid_rows_only():
  config = tiny_config()
  batch = host_batch()
  state, _ = setup(config, batch)
  mean, std = np.full(3, 100.0, np.float32), np.full(3, 60.0, np.float32)
  eval_step = jax.jit(steps.make_eval_step(tiny_model.build(config), tiny_model, config, {},
                                           mean, std))
  half = dict(batch, valid=np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32))
  sums_half, arrays = eval_step(state, half)
  sub = {k: v[:4] for k, v in batch.items()}
  sums_sub, _ = eval_step(state, sub)
  assert float(sums_half["count"]) == 4.0
  np.testing.assert_allclose(float(sums_half["loss"]), float(sums_sub["loss"]), rtol=1e-5)
  assert arrays["attention_mean"].shape == (8,) and arrays["logits"].shape == (8, 1)


@pytest.fixture
def tiny_registered(monkeypatch):
  monkeypatch.setitem(models.MODELS, "tiny", "tiny_model")


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_end_to_end_resume_continues_at_saved_step(tmp_path, tiny_registered):
  """2 steps, then a rerun to 5 steps resumes at step 2 with the same data position:
  its final parameters equal an uninterrupted 5-step run's."""
  synthetic = str(tmp_path / "synthetic")
  base = dict(max_steps=5, num_epochs=20, log_every_steps=1)

  def run(workdir, full_eval=True, **overrides):
    config = tiny_config(**{**base, **overrides})
    config.data.synthetic_dir = synthetic
    config.eval.num_visualizations = 2 if full_eval else 0
    config.eval.splits = ("validation", "test") if full_eval else ("validation",)
    return train.train_and_evaluate(config, str(workdir))

  run(tmp_path / "a", full_eval=False, max_steps=2)
  latest = tmp_path / "a" / "checkpoints" / "latest"
  assert sorted(os.listdir(latest)) == ["2"]
  results = run(tmp_path / "a")
  logged = [r["step"] for r in _read_jsonl(tmp_path / "a" / "tensorboard" / "metrics.jsonl")
            if "train/loss" in r]
  assert logged == [1, 2, 3, 4, 5]  # The rerun started at step 3.
  assert sorted(os.listdir(latest)) == ["4", "5"]  # Epoch end 4 and the last step.
  run(tmp_path / "b", full_eval=False)

  from dermjax import checkpoint
  def final_params(workdir):
    manager = checkpoint._manager(str(workdir / "checkpoints" / "latest"))
    restored = manager.restore(5)
    return restored["state"]["params"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               final_params(tmp_path / "a"), final_params(tmp_path / "b"))

  workdir = tmp_path / "a"
  for split in ("validation", "test"):
    saved = json.load(open(workdir / "results" / f"{split}.json"))
    assert saved["diagnosis"]["num_examples"] == 8
    assert saved["report"]["num_rows"] == 8
    predictions = np.load(workdir / "predictions" / f"{split}.npz")
    assert predictions["scores"].shape == (8,) and predictions["ids"].dtype.kind == "U"
    assert len(os.listdir(workdir / "explanations" / split)) == 2
  assert set(results) == {"validation", "test"}
  assert any(d.startswith("best_validation_auc") for d in os.listdir(workdir / "checkpoints"))
