"""Defaults every experiment config starts from (configs/*.py call `base_config()`).

The sections: data (see dermjax.input_pipeline.default_data_config), model (name + that
model's fields), loss, optim, train, eval. Experiment configs override fields only.
"""

import importlib.util
import os

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """A complete config with the shared defaults; model/loss fields are filled by configs."""
  from dermjax import input_pipeline  # Local import: configs load fast and stay light.

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = input_pipeline.default_data_config()

  config.model = ml_collections.ConfigDict()
  config.model.name = ""
  config.model.num_classes = 1            # 1: sigmoid melanoma score; >1: softmax classes.
  config.model.dtype = "float32"          # compute dtype ("bfloat16" for mixed precision).
  config.model.pretrained = ml_collections.FieldReference(None, field_type=str)  # .pth/.safetensors/dir
  config.model.pretrained_arch = "vgg16_bn"
  config.model.pretrained_targets = ml_collections.ConfigDict()  # submodule -> path in checkpoint.

  config.loss = ml_collections.ConfigDict()
  config.loss.focal_gamma = 2.0

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"              # "adam" | "sgd"
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.momentum = 0.9             # sgd only.
  config.optim.nesterov = False           # sgd only.
  config.optim.weight_decay = 0.0         # L2 added to the gradient, as torch's weight_decay.
  config.optim.learning_rate = 1e-4       # for params matching no group below.
  # Per-module learning rates: group -> (regex over "/"-joined param path, learning rate).
  # A rate of 0 freezes the group (no update; models also stop the backward pass there).
  config.optim.groups = ml_collections.ConfigDict()
  config.optim.decay_every_epochs = 0     # >0: multiply rates by decay_factor every N epochs.
  config.optim.decay_factor = 0.1

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 20
  config.train.max_steps = -1             # >0 caps the run (smoke tests).
  config.train.log_every_steps = 10
  config.train.eval_every_epochs = 1
  config.train.checkpoint_metric = "validation/loss"   # saved when it improves.
  config.train.checkpoint_mode = "min"
  config.train.keep_best = ("validation/auc",)         # also keep the best by these (max).
  config.train.distributed = False        # jax.distributed.initialize() for multi-host.

  config.eval = ml_collections.ConfigDict()
  config.eval.splits = ("validation", "test")
  config.eval.num_visualizations = 8      # explanation PNGs per split.
  return config


def config_module(path: str):
  """The config file at `path` as a module (configs/ is no package, so tests and tools load
  experiment configs by path)."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"dermjax_configs_{name}", path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"no config file at {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str, arg=None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`."""
  return config_module(path).get_config(arg)
