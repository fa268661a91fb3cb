"""AttnMel's training recipe as the authors' code (issue 10): one scale in training and
evaluation (random / central 224 window of the 256 image, maps 28 x 28 and 14 x 14), k x 90
rotations, and data.passes_per_epoch (num_aug) in the steps per epoch and the schedule."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax import config_lib
from dermjax import input_pipeline
from dermjax import optim
from dermjax import steps
from dermjax.data import schema
from dermjax.models import attnmel
from dermjax.models.common import explain as common_explain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(arg):
  return config_lib.load_config(os.path.join(ROOT, "configs", "attnmel.py"), arg)


@pytest.mark.parametrize("train_mode", [True, False])
def test_paper_rows_see_224_in_training_and_evaluation(train_mode):
  config = load_config("lesion,paper")
  assert (config.data.image_size, config.data.augment.crop_size) == (256, 224)
  assert config.data.augment.rotation == "k90" and config.data.augment.zoom is None
  module = attnmel.build(config)
  spec = schema.batch_spec(config.data.image_size, 2)
  host = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
  mean = std = np.ones(3, np.float32)

  def forward(batch):
    batch = steps.preprocess(batch, jax.random.key(0), config, mean, std, train=train_mode)
    variables = module.init(jax.random.key(1), batch)
    return batch, module.apply(variables, batch)

  batch, outputs = jax.eval_shape(forward, host)
  assert host["image"].shape == (2, 256, 256, 3)
  assert batch["image"].shape == (2, 224, 224, 3) and batch["masks"].shape[1:3] == (224, 224)
  assert outputs["attention3"].shape == (2, 28, 28)
  assert outputs["attention4"].shape == (2, 14, 14)


def test_evaluation_is_the_central_window_and_explanations_match_it():
  config = load_config("attnmel")      # CPU row: 56 of 64, as 224 of 256
  rng = np.random.default_rng(0)
  host = {"image": rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
          "masks": rng.integers(0, 2, (2, 64, 64, 1 + schema.NUM_ATTRIBUTES), dtype=np.uint8)}
  out = steps.preprocess(host, jax.random.key(0), config, np.zeros(3), np.ones(3), train=False)
  np.testing.assert_array_equal(np.asarray(out["image"]), host["image"][:, 4:60, 4:60])
  images, batch = common_explain.model_view(host["image"], host, config)
  np.testing.assert_array_equal(images, host["image"][:, 4:60, 4:60])
  np.testing.assert_array_equal(batch["masks"], host["masks"][:, 4:60, 4:60])


@pytest.mark.parametrize("dataset,passes", [("isic2017", 2), ("isic2016", 5)])
def test_paper_passes_per_epoch(dataset, passes):
  assert load_config(f"attnmel,{dataset},paper").data.passes_per_epoch == passes
  assert load_config(f"attnmel,{dataset}").data.passes_per_epoch == 1


def test_passes_per_epoch_scales_steps_per_epoch_and_the_schedule(isic2017_raw, isic2017_prepared):
  prepared_dir, _ = isic2017_prepared
  mesh = steps.create_mesh()
  steps_per_epoch = {}
  for passes in (1, 3):
    config = load_config("attnmel")
    config.data.dir, config.data.prepared_dir = isic2017_raw, prepared_dir
    config.data.batch_size = 4
    config.data.num_folds = 3         # as the fixture prepared it
    config.data.passes_per_epoch = passes
    steps_per_epoch[passes] = input_pipeline.create_datasets(config.data, mesh=mesh).steps_per_epoch
  per_pass = steps_per_epoch[1]
  assert per_pass >= 1 and steps_per_epoch[3] == 3 * per_pass
  # The rate x 0.1 every 10 epochs: the first decay comes 3x later in steps.
  rate = config.optim.learning_rate
  for passes, spe in steps_per_epoch.items():
    decay_step = 10 * spe
    before = optim.learning_rates(config.optim, spe, decay_step - 1)
    after = optim.learning_rates(config.optim, spe, decay_step)
    assert list(before.values()) == pytest.approx([rate])
    assert list(after.values()) == pytest.approx([0.1 * rate])
  config.data.passes_per_epoch = 0
  with pytest.raises(ValueError, match="passes_per_epoch"):
    input_pipeline.create_datasets(config.data, mesh=mesh)
