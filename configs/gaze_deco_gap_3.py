"""Table 3 'VGG_AttentiveConvLSTM_Deco_GAP_3': decoder, GAP classifier on X_T GAPs,
mini-batch balancing, skips + frozen batch norm (= configs/gaze.py thesis)."""

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
    raise ValueError(f"configs/gaze_deco_gap_3.py: unknown argument {arg!r} (use none or 'cpu')")
  gaze = _gaze()
  config = gaze.get_config(None if arg == "cpu" else "thesis")
  config.model.skips = True
  config.model.frozen_bn = True
  config.model.step_dim = 0
  config.loss.balancing = "batch"
  return config
