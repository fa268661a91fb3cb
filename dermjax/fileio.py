"""Atomic file writes: a reader (or a run killed mid-write) never sees a half-written file.

Every result a run leaves (results JSON, predictions NPZ, CSVs, config.json, PNGs) goes
through `atomic_path`: the content is written to a temporary file in the same folder and
renamed over the target (os.replace is atomic on POSIX within one file system).
"""

import contextlib
import json
import math
import os
import tempfile

import numpy as np

TMP_SUFFIX = ".tmp-dermjax"


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; on success it replaces `path`, on error it goes."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=directory)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def _json_default(value):
  if isinstance(value, (np.floating, np.integer, np.bool_)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def nan_to_none(value):
  """NaN floats -> None, recursively (JSON has no NaN)."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [nan_to_none(v) for v in value]
  return value


def to_json(obj, **kwargs) -> str:
  """JSON text of results-like objects (numpy scalars/arrays allowed, NaN -> null)."""
  return json.dumps(nan_to_none(obj), default=_json_default, **kwargs)


def write_json(path: str, obj) -> None:
  write_text(path, to_json(obj, indent=2))


def savez(path: str, **arrays) -> None:
  """np.savez, atomically (the temporary name keeps the .npz suffix numpy wants)."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)


def save_npy(path: str, array) -> None:
  """np.save, atomically (written through a file object, so numpy adds no suffix)."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(array))


def remove_stale_temporaries(directory: str) -> list:
  """Deletes temporary files an interrupted atomic write left in `directory` (not below)."""
  if not os.path.isdir(directory):
    return []
  stale = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(TMP_SUFFIX)]
  for path in stale:
    os.remove(path)
  return stale
