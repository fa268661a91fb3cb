"""Input normalisation: the per-channel mean / std the device step applies (0-255 units).

config.data.normalization:
  "dataset"   the training split's pixel mean / std (stats.json of the prepared data): rows
              trained from scratch, and papers that say so (the gaze thesis, Sec. 4.1).
  "imagenet"  torchvision's ImageNet constants, mean (0.485, 0.456, 0.406) and std (0.229,
              0.224, 0.225) of 0-1 pixels, i.e. x 255 here: rows that graft ImageNet weights.
  "fixed"     data.normalization_mean / data.normalization_std, given on the 0-1 scale as
              torchvision's Normalize takes them (x 255 here): e.g. an authors' code's constants.

A run records its choice (mode, mean, std) in results/normalization.json, which
dermjax.predict and dermjax.evaluate read; a record without a mode (runs written before
there was a choice) was normalised with the dataset's statistics.
"""

import numpy as np

MODES = ("dataset", "imagenet", "fixed")
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # torchvision's ImageNet constants, 0-1 pixels.
IMAGENET_STD = (0.229, 0.224, 0.225)


def _channels(values, name):
  """3 numbers -> float32 [3]; raises naming the field otherwise."""
  try:
    out = np.asarray(values, np.float32).reshape(3)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be 3 numbers (R, G, B), got {values!r}") from e
  if not np.all(np.isfinite(out)):
    raise ValueError(f"{name} must be finite, got {values!r}")
  return out


def check_mode(mode) -> str:
  """config.data.normalization's mode; raises for an unknown one."""
  if mode not in MODES:
    raise ValueError(f"data.normalization must be one of {MODES}, got {mode!r}")
  return mode


def check(data_config):
  """Raises for a bad data.normalization (mode, or "fixed" values) before any data work."""
  if check_mode(data_config.get("normalization", "dataset")) != "dataset":
    normalization(data_config)


def normalization(data_config, stats=None) -> dict:
  """config.data (+ the prepared data's stats.json, needed for "dataset") -> {"mode", "mean",
  "std"}, mean and std float32 [3] in 0-255 units."""
  c = data_config
  mode = check_mode(c.get("normalization", "dataset"))
  if mode == "dataset":
    if stats is None:
      raise ValueError("data.normalization = 'dataset' needs the prepared data's stats.json")
    mean, std = stats["mean"], stats["std"]
    name = "stats.json mean / std"
  elif mode == "imagenet":
    mean, std = np.multiply(IMAGENET_MEAN, 255.0), np.multiply(IMAGENET_STD, 255.0)
    name = "ImageNet mean / std"
  else:
    mean = np.multiply(_channels(c.get("normalization_mean"), "data.normalization_mean"), 255.0)
    std = np.multiply(_channels(c.get("normalization_std"), "data.normalization_std"), 255.0)
    name = "data.normalization_mean / normalization_std"
  mean, std = _channels(mean, name), _channels(std, name)
  if np.any(std <= 0):
    raise ValueError(f"{name}: std must be > 0, got {std.tolist()}")
  return {"mode": mode, "mean": mean, "std": std}


def from_record(record: dict) -> dict:
  """A results/normalization.json record -> {"mode", "mean", "std"} (float32 [3]); a record
  without a mode is "dataset" (the only normalisation before data.normalization existed)."""
  return {"mode": check_mode(record.get("mode", "dataset")),
          "mean": _channels(record["mean"], "normalization.json mean"),
          "std": _channels(record["std"], "normalization.json std")}
