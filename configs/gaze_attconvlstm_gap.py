"""Table 3 'VGG_AttentiveConvLSTM_GAP': encoder + Attentive ConvLSTM, no decoder, GAP classifier."""

import os

from dermjax.defaults import load_config

GAZE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaze.py")


def get_config(arg=None):
  """The thesis setting (configs/gaze.py:thesis) with this variant's fields; `:cpu` starts
  from the CPU-sized default instead."""
  config = load_config(GAZE, arg or "thesis")
  config.model.decoder = False
  config.model.head = "gap"
  return config
