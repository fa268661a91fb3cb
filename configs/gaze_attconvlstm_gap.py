"""Table 3 'VGG_AttentiveConvLSTM_GAP': encoder + Attentive ConvLSTM, no decoder, GAP classifier."""

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
    raise ValueError(f"configs/gaze_attconvlstm_gap.py: unknown argument {arg!r} (use none or 'cpu')")
  gaze = _gaze()
  config = gaze.get_config(None if arg == "cpu" else "thesis")
  config.model.decoder = False
  config.model.head = "gap"
  return config
