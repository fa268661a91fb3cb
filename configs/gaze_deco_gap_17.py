"""Table 3 'VGG_AttentiveConvLSTM_Deco_GAP_17': decoder, the X' GAP version (a dense layer
reduces the concatenated per-step GAPs before pool5's GAP joins them), w_i weights (eq. 15),
no skips + batch norm."""

import importlib.util
import os


def _gaze():
  """configs/gaze.py, loaded by path (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gaze.py")
  spec = importlib.util.spec_from_file_location("configs_gaze", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  """The thesis setting (configs/gaze.py "thesis") with this variant's fields; arg "cpu"
  starts from the CPU-sized default (configs/gaze.py without argument) instead."""
  if arg not in (None, "", "cpu"):
    raise ValueError(f"configs/gaze_deco_gap_17.py: unknown argument {arg!r} (use none or 'cpu')")
  gaze = _gaze()
  config = gaze.get_config(None if arg == "cpu" else "thesis")
  config.model.skips = False
  config.model.frozen_bn = False
  config.model.step_dim = 256
  config.loss.balancing = "presence_others"
  return config
