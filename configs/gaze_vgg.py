"""Table 3 'VGG': VGG-16-BN with torchvision's classifier (fc6/fc7/fc8), thesis recipe."""

import os

from dermjax.defaults import load_config
from dermjax.models.vgg_classifier import pretrained_targets

GAZE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaze.py")


def get_config(arg=None):
  """The thesis setting (configs/gaze.py:thesis) with this variant's fields; `:cpu` starts
  from the CPU-sized default instead."""
  config = load_config(GAZE, arg or "thesis")
  config.model.name = "vgg16"        # dermjax/models/vgg_classifier.py, params under "backbone".
  config.optim.groups = {}            # one rate for the whole VGG: the thesis's branch rate.
  config.optim.learning_rate = 1e-4
  config.model.head = "fc"
  config.model.pretrained_targets = pretrained_targets(config.model.head)
  return config
