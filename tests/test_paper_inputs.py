"""What the paper rows feed their models (issue 21): input normalisation per table (ImageNet
constants where ImageNet weights are grafted and the paper says nothing else, the dataset's
statistics where the paper says so and on the CPU rows), MASLL's local-crop source, CIN's
whole-image 448 px input, and each table's docstring declaring them."""

import os

import ml_collections
import numpy as np
import pytest

from dermjax import config_lib
from dermjax.data import loader
from dermjax.data import normalization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Table -> the paper rows' normalisation (gaze: the thesis standardises with the training
# set's mean / std, Sec. 4.1; the others graft ImageNet weights and say nothing else).
PAPER_NORMALIZATION = {"gaze": "dataset", "attnmel": "imagenet", "masll": "imagenet",
                       "cin": "imagenet", "zoome": "imagenet"}


def table(name):
  return config_lib.config_module(os.path.join(REPO, "configs", f"{name}.py"))


def test_imagenet_constants_are_torchvisions_on_the_0_255_scale():
  c = ml_collections.ConfigDict({"normalization": "imagenet"})
  got = normalization.normalization(c)
  np.testing.assert_allclose(got["mean"], [123.675, 116.28, 103.53], rtol=1e-6)
  np.testing.assert_allclose(got["std"], [58.395, 57.12, 57.375], rtol=1e-6)
  assert got["mean"].dtype == np.float32 and got["mode"] == "imagenet"


def test_modes_records_and_errors():
  stats = {"mean": [100.0, 90.0, 80.0], "std": [50.0, 40.0, 30.0]}
  c = ml_collections.ConfigDict({"normalization": "dataset"})
  assert normalization.normalization(c, stats)["mean"].tolist() == [100.0, 90.0, 80.0]
  with pytest.raises(ValueError, match="stats.json"):
    normalization.normalization(c)
  c = ml_collections.ConfigDict({"normalization": "fixed", "normalization_mean": (0.5, 0.5, 0.5),
                                 "normalization_std": (0.25, 0.5, 1.0)})
  np.testing.assert_allclose(normalization.normalization(c)["std"], [63.75, 127.5, 255.0])
  c.normalization_std = (0.25, 0.0, 1.0)
  with pytest.raises(ValueError, match="std must be > 0"):
    normalization.check(c)
  c.normalization_std = (0.25, 0.5)
  with pytest.raises(ValueError, match="data.normalization_std must be 3 numbers"):
    normalization.check(c)
  with pytest.raises(ValueError, match="data.normalization must be one of"):
    normalization.check(ml_collections.ConfigDict({"normalization": "imagenet1k"}))
  old = normalization.from_record({"mean": stats["mean"], "std": stats["std"], "class_names": []})
  assert old["mode"] == "dataset" and old["std"].tolist() == [50.0, 40.0, 30.0]
  assert config_lib.base_config().data.normalization == "dataset"


@pytest.mark.parametrize("name", sorted(PAPER_NORMALIZATION))
def test_each_tables_paper_rows_and_cpu_rows(name):
  module = table(name)
  for row in module.ROWS:
    paper, cpu = module.get_config(f"{row},paper"), module.get_config(row)
    assert paper.data.normalization == PAPER_NORMALIZATION[name], (name, row)
    assert cpu.data.normalization == "dataset", (name, row)   # trained from scratch
    for config in (paper, cpu):
      normalization.check(config.data)
  doc = module.__doc__.lower()
  assert "normalisation" in doc and PAPER_NORMALIZATION[name] in doc, name


def test_attnmel_code_constants_are_one_switch_away():
  module = table("attnmel")
  for dataset, (mean, std) in {"isic2017": ((0.6820, 0.5312, 0.4736), (0.0840, 0.1140, 0.1282)),
                               "isic2016": ((0.7012, 0.5517, 0.4875),
                                            (0.0942, 0.1331, 0.1521))}.items():
    config = module.get_config(f"attnmel,{dataset},paper")
    config.data.normalization = "fixed"
    got = normalization.normalization(config.data)
    np.testing.assert_allclose(got["mean"], np.multiply(mean, 255), rtol=1e-6)
    np.testing.assert_allclose(got["std"], np.multiply(std, 255), rtol=1e-6)
  assert "--config.data.normalization=fixed" in module.__doc__


def test_masll_crop_source_paper_and_cpu_rows():
  module = table("masll")
  for row in module.ROWS:
    paper, cpu = module.get_config(f"{row},paper"), module.get_config(row)
    if paper.model.name == "masll":
      assert paper.model.crop_source == "source" and paper.data.source_size == 512
      assert cpu.model.crop_source == "input" and cpu.data.source_size == 0
    else:   # the baselines have no local branch: no copy shipped
      assert paper.data.source_size == cpu.data.source_size == 0
  assert "crop_source" in module.__doc__ and "source_size" in module.__doc__


def test_cin_paper_input_is_the_whole_image_resized_to_448():
  module = table("cin")
  for row in module.ROWS:
    data = module.get_config(f"{row},paper").data
    assert data.image_size == data.resize_size == 448 and data.crop == "resize_center_crop"
    box = loader.crop_box(767, 1022, image_size=data.image_size, resize_size=data.resize_size,
                          crop=data.crop)
    assert box == (0.0, 0.0, 1022.0, 767.0)
  crop = loader.crop_box(767, 1022, image_size=448, resize_size=512, crop="resize_center_crop")
  assert crop[2] - crop[0] == pytest.approx(0.875 * 1022)     # the old 87.5% centre crop
  assert "--config.data.resize_size=512" in module.__doc__


def test_gaze_declares_the_notebook_reading_it_does_not_reproduce():
  doc = table("gaze").__doc__
  assert "torch.cat(out_classes, 0).view(B, T, -1)" in doc and "not reproduced" in doc
