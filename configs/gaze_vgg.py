"""Table 3 'VGG': VGG-16-BN with torchvision's classifier (fc6/fc7/fc8), thesis recipe."""

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
    raise ValueError(f"configs/gaze_vgg.py: unknown argument {arg!r} (use none or 'cpu')")
  gaze = _gaze()
  config = gaze.get_config(None if arg == "cpu" else "thesis")
  config.model.name = "vgg16"        # dermjax/models/vgg_classifier.py, params under "backbone".
  config.model.pretrained_targets = {"backbone": ""}
  config.optim.groups = {}            # one rate for the whole VGG: the thesis's branch rate.
  config.optim.learning_rate = 1e-4
  config.model.head = "fc"
  return config
