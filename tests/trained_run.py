"""A tiny finished run for the after-training tests (predict, evaluate, cv, report, submission).

  get_config(arg=None)    tests/tiny_model.py ("tiny") at 16 px on 16/8/8 synthetic ISIC
                          2017 images, 2 steps; also a config file: --config=tests/trained_run.py
  registered()            context: "tiny" in dermjax.models.MODELS
  tiny_run(tmp_path_factory, seed=0, normalization="dataset") -> workdir of a finished run,
                          trained once per session (per seed and data.normalization)
  TESTS_DIR               add to PYTHONPATH of subprocesses that load the tiny model
"""

import contextlib
import os

import ml_collections

from dermjax import config_lib

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SIZE = 16
_RUNS = {}


def get_config(arg=None):
  del arg
  config = config_lib.base_config()
  config.model.name = "tiny"
  config.model.frozen_encoder = False
  config.data.image_size = config.data.resize_size = SIZE
  config.data.batch_size = config.data.eval_batch_size = 8
  config.data.num_threads = 1
  config.data.synthetic_num_images = {"train": 16, "validation": 8, "test": 8}
  config.data.augment = ml_collections.ConfigDict(dict(
      rotation="none", hflip=True, vflip=True, zoom=None, fill="reflect"))
  config.loss.focal_gamma = 0.0
  config.optim.learning_rate = 1e-2
  config.train.num_epochs = 1
  config.train.max_steps = 2
  config.train.log_every_steps = 1
  config.eval.num_visualizations = 2
  return config


@contextlib.contextmanager
def registered():
  import pytest  # pylint: disable=g-import-not-at-top
  from dermjax import models  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(models.MODELS, "tiny", "tiny_model")
    yield


def tiny_run(tmp_path_factory, seed=0, normalization="dataset") -> str:
  """Workdir of a finished tiny run (trained at the first call of the session per seed and
  data.normalization)."""
  key = seed if normalization == "dataset" else (seed, normalization)
  if key not in _RUNS:
    from dermjax import train  # pylint: disable=g-import-not-at-top
    root = tmp_path_factory.mktemp(f"tiny_run_{seed}" + ("" if key == seed else f"_{normalization}"))
    config = get_config()
    config.seed = seed
    config.data.normalization = normalization
    # Runs share one synthetic set, so their predictions are on the same images.
    config.data.synthetic_dir = str(tmp_path_factory.getbasetemp() / "tiny_synthetic")
    with registered():
      train.train_and_evaluate(config, str(root))
    _RUNS[key] = str(root)
  return _RUNS[key]
