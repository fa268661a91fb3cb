"""The tiny experiment of the reliability tests (tests/test_reliability*.py), run as
`python tests/reliability_driver.py --config=tests/reliability_config.py ...`.

12 synthetic training images at 16 px, batch 4: 3 steps per epoch, 9 steps in all,
`latest` every 2 steps and at epoch ends; only the validation split is evaluated.
"""

import ml_collections

from dermjax import config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base_config()
  config.model.name = "tiny"
  config.model.frozen_encoder = False
  config.model.nan_for_index = -1        # >= 0: the loss is NaN on batches holding it.
  config.data.image_size = 16
  config.data.resize_size = 16
  config.data.batch_size = 4
  config.data.eval_batch_size = 4
  config.data.num_threads = 1
  config.data.synthetic_num_images = {"train": 12, "validation": 4, "test": 4}
  config.data.augment = ml_collections.ConfigDict(dict(
      rotation="uniform", max_rotation_deg=180.0, hflip=True, vflip=True, zoom=None, fill="reflect"))
  config.loss.focal_gamma = 0.0
  config.optim.learning_rate = 1e-2
  config.train.num_epochs = 3
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.checkpoint_every_minutes = 0.0
  config.eval.splits = ("validation",)
  config.eval.num_visualizations = 0
  return config
