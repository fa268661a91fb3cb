"""Table 3 'VGG_AttentiveConvLSTM_Deco_GAP_17': decoder, the X' GAP version (a dense layer
reduces the concatenated per-step GAPs before pool5's GAP joins them), w_i weights (eq. 15),
no skips + batch norm."""

import os

from dermjax.defaults import load_config

GAZE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaze.py")


def get_config(arg=None):
  """The thesis setting (configs/gaze.py:thesis) with this variant's fields; `:cpu` starts
  from the CPU-sized default instead."""
  config = load_config(GAZE, arg or "thesis")
  config.model.skips = False
  config.model.frozen_bn = False
  config.model.step_dim = 256
  config.loss.balancing = "presence_others"
  return config
