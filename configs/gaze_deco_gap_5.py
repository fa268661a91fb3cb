"""Table 3 'VGG_AttentiveConvLSTM_Deco_GAP_5': decoder, GAP classifier on X_T GAPs, w'_i
weights (eq. 16), no skips + batch norm."""

import os

from dermjax.defaults import load_config

GAZE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaze.py")


def get_config(arg=None):
  """The thesis setting (configs/gaze.py:thesis) with this variant's fields; `:cpu` starts
  from the CPU-sized default instead."""
  config = load_config(GAZE, arg or "thesis")
  config.model.skips = False
  config.model.frozen_bn = False
  config.model.step_dim = 0
  config.loss.balancing = "presence_inverse"
  return config
