"""config.model.pretrained = a dermjax workdir: a trained stage grafts into another model."""

import jax
import numpy as np
import pytest

import tiny_model
from dermjax import checkpoint
from dermjax import models
from dermjax import train
from dermjax import weights
from test_train import tiny_config


def test_a_finished_run_grafts_exactly_the_named_submodules(tmp_path, monkeypatch):
  monkeypatch.setitem(models.MODELS, "tiny", "tiny_model")
  config = tiny_config(max_steps=2, num_epochs=1, log_every_steps=1)
  config.data.synthetic_dir = str(tmp_path / "synthetic")
  config.eval.num_visualizations = 0
  config.eval.splits = ("validation",)
  run = tmp_path / "stage1"
  train.train_and_evaluate(config, str(run))
  trained = checkpoint.run_variables(str(run))

  batch = {"image": np.zeros((1, 16, 16, 3), np.float32)}
  fresh = tiny_model.TinyNet().init(jax.random.key(123), batch)
  second = config.copy_and_resolve_references()
  second.model.pretrained = str(run)
  second.model.pretrained_targets = {"encoder_conv": "encoder_conv", "encoder_bn": "encoder_bn"}
  grafted = weights.apply_pretrained(fresh, second.model)

  for name in ("encoder_conv",):
    jax.tree.map(np.testing.assert_array_equal, grafted["params"][name], trained["params"][name])
  jax.tree.map(np.testing.assert_array_equal, grafted["batch_stats"]["encoder_bn"],
               trained["batch_stats"]["encoder_bn"])
  for name in ("head_conv", "head_dense"):   # not targeted: the fresh initialisation stays.
    jax.tree.map(np.testing.assert_array_equal, grafted["params"][name], fresh["params"][name])
  assert not np.array_equal(np.asarray(fresh["params"]["encoder_conv"]["kernel"]),
                            np.asarray(trained["params"]["encoder_conv"]["kernel"]))


def test_a_folder_without_checkpoints_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a dermjax run"):
    checkpoint.run_variables(str(tmp_path))
