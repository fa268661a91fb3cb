"""Architecture setting 3, read as no skips x frozen ImageNet batch norm (the 2x2 grid;
the thesis's wording "without skip connections and batch normalization" is ambiguous)."""

import os

from dermjax.defaults import load_config

GAZE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaze.py")


def get_config(arg=None):
  """The thesis setting (configs/gaze.py:thesis) with this variant's fields; `:cpu` starts
  from the CPU-sized default instead."""
  config = load_config(GAZE, arg or "thesis")
  config.model.skips = False
  config.model.frozen_bn = True
  return config
