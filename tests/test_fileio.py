"""dermjax.fileio: every result file is written whole or not at all."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from dermjax import fileio
from dermjax import visualize


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "results.json")
  fileio.write_json(path, {"auc": 0.5})
  with pytest.raises(RuntimeError):
    with fileio.atomic_path(path) as tmp:
      with open(tmp, "w") as f:
        f.write("{half")
      raise RuntimeError("killed mid-write")
  with open(path) as f:
    assert json.load(f) == {"auc": 0.5}
  assert os.listdir(tmp_path) == ["results.json"]


def test_write_json_turns_nan_into_null(tmp_path):
  path = tmp_path / "a.json"
  fileio.write_json(str(path), {"x": float("nan"), "y": np.float32(2.0)})
  assert json.loads(path.read_text()) == {"x": None, "y": 2.0}


def test_save_npy_and_save_png_write_the_named_file_only(tmp_path):
  array = np.arange(6, dtype=np.float32).reshape(2, 3)
  fileio.save_npy(str(tmp_path / "map.npy"), array)
  np.testing.assert_array_equal(np.load(tmp_path / "map.npy"), array)
  image = np.zeros((4, 5, 3), np.uint8)
  image[1, 2] = (10, 20, 30)
  visualize.save_png(image, str(tmp_path / "sub" / "strip.png"))
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "strip.png")), image)
  assert sorted(os.listdir(tmp_path)) == ["map.npy", "sub"]
  assert os.listdir(tmp_path / "sub") == ["strip.png"]
