"""prepare(): the array_record TFDS build, stats.json / splits.json, atomicity, load()."""

import collections
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from dermjax.data import isic
from dermjax.data import prepare
from dermjax.data import schema
from dermjax.data.errors import DatasetError


def _leftovers(prepared_dir):
  """Temporary folders left behind (the .<layout>.lock file of prepare's flock stays)."""
  return [n for n in os.listdir(prepared_dir)
          if (n.startswith(".") and not n.endswith(".lock")) or ".old-" in n]


def test_prepared_records_equal_the_raw_records(isic2017_raw, isic2017_prepared):
  prepared_dir, layout = isic2017_prepared
  data = prepare.load(prepared_dir, layout)
  assert "tensorflow" not in sys.modules
  raw = {r["id"]: r for s in schema.SPLITS for r in isic.read_records(layout, isic2017_raw, s)}
  seen = set()
  for split in schema.SPLITS:
    source = data.source(split)
    assert len(source) == len(data.splits["splits"][split])
    assert len(source) == data.stats["splits"][split]["num_images"]
    for i in range(len(source)):
      r = source[i]
      expected = raw[r["id"]]
      assert set(r) == set(expected)
      assert r["split"] == split == expected["split"]
      for k, v in expected.items():
        if isinstance(v, np.ndarray):
          assert r[k].dtype == v.dtype and r[k].shape == v.shape, k
        np.testing.assert_array_equal(r[k], v, err_msg=k)
      seen.add(r["id"])
  assert seen == set(raw)


def test_stats_match_a_direct_computation(isic2017_raw, isic2017_prepared):
  prepared_dir, layout = isic2017_prepared
  data = prepare.load(prepared_dir, layout)
  stats = data.stats
  assert stats["classes"] == list(schema.CLASSES["isic2017"])
  for split in schema.SPLITS:
    records = list(isic.read_records(layout, isic2017_raw, split))
    s = stats["splits"][split]
    assert s["num_images"] == len(records)
    assert s["melanoma"] == sum(int(r["melanoma"]) for r in records)
    assert s["class_counts"] == np.bincount([r["label"] for r in records], minlength=3).tolist()
    presence = collections.Counter()
    for r in records:  # eqs. 17-19 in numpy
      lesion, gaze = r["lesion_mask"] > 0, r["attribute_masks"][..., :4] > 0
      dermo = gaze.any(-1)
      presence["lesion"] += (lesion & ~dermo).any()
      presence["skin"] += (~(lesion | dermo)).any()
      for k, name in enumerate(schema.ATTRIBUTES[:4]):
        presence[name] += gaze[..., k].any()
    assert s["structure_presence"] == {k: presence[k] for k in schema.STRUCTURES}
    assert s["height"]["max"] == max(r["image"].shape[0] for r in records)
    if split == "train":
      pixels = np.concatenate([r["image"].reshape(-1, 3) for r in records]).astype(np.float64)
      np.testing.assert_allclose(stats["mean"], pixels.mean(0), rtol=1e-9)
      np.testing.assert_allclose(stats["std"], pixels.std(0), rtol=1e-6)


def test_structure_pixel_shares_match_a_numpy_count(isic2017_raw, isic2017_prepared):
  """Thesis Table 1's "presence in pixels": per structure, its pixels over all pixels of the
  split's images with masks (eqs. 17-19 in numpy at original resolution)."""
  prepared_dir, layout = isic2017_prepared
  stats = prepare.load(prepared_dir, layout).stats
  for split in schema.SPLITS:
    pixels, total = collections.Counter(), 0
    for r in isic.read_records(layout, isic2017_raw, split):
      if not (r["has_lesion_mask"] or r["has_attributes"]):
        continue
      lesion, gaze = r["lesion_mask"] > 0, r["attribute_masks"][..., :4] > 0
      dermo = gaze.any(-1)
      pixels["lesion"] += int((lesion & ~dermo).sum())
      pixels["skin"] += int((~(lesion | dermo)).sum())
      for k, name in enumerate(schema.ATTRIBUTES[:4]):
        pixels[name] += int(gaze[..., k].sum())
      total += lesion.size
    s = stats["splits"][split]
    assert s["num_mask_pixels"] == total > 0
    assert s["structure_pixels"] == {k: pixels[k] for k in schema.STRUCTURES}
    for k in schema.STRUCTURES:
      assert s["structure_pixel_share"][k] == pytest.approx(pixels[k] / total, rel=1e-12)
    assert 0 < s["structure_pixel_share"]["pigment_network"] < s["structure_pixel_share"]["skin"]
  table = prepare.structure_table(stats["splits"]["train"])
  lines = table.splitlines()
  assert len(lines) == 1 + len(schema.STRUCTURES) and "% pixels" in lines[0]
  train = stats["splits"]["train"]
  skin = lines[1 + schema.STRUCTURES.index("skin")].split()
  assert skin == ["skin", str(train["structure_presence"]["skin"]),
                  f"{100 * train['structure_presence']['skin'] / train['num_with_masks']:.2f}",
                  f"{100 * train['structure_pixel_share']['skin']:.2f}"]


def test_splits_file_has_stratified_folds(isic2017_prepared):
  prepared_dir, layout = isic2017_prepared
  splits = prepare.load(prepared_dir, layout).splits
  assert splits["num_folds"] == 3
  train = splits["splits"]["train"]
  assert sorted(splits["folds"]) == sorted(train)
  sizes = collections.Counter(splits["folds"].values())
  assert set(sizes) == {0, 1, 2} and max(sizes.values()) - min(sizes.values()) <= 1
  # Split ids are disjoint and cover every image.
  all_ids = [i for ids in splits["splits"].values() for i in ids]
  assert len(all_ids) == len(set(all_ids)) == 44


def test_source_works_with_grain(isic2017_prepared):
  import grain  # pylint: disable=g-import-not-at-top
  data = prepare.load(*isic2017_prepared)
  dataset = grain.MapDataset.source(data.source("validation")).map(lambda r: r["image"].shape)
  assert len(dataset) == 8 and len(dataset[3]) == 3


def test_prepare_is_idempotent_and_checks_its_config(isic2017_raw, isic2017_prepared):
  prepared_dir, layout = isic2017_prepared
  stats = os.path.join(prepared_dir, layout, "stats.json")
  before = os.stat(stats).st_mtime_ns
  assert prepare.prepare(layout, isic2017_raw, prepared_dir, num_folds=3) == os.path.join(
      prepared_dir, layout)
  assert os.stat(stats).st_mtime_ns == before
  with pytest.raises(ValueError, match="was prepared with .*delete it"):
    prepare.prepare(layout, isic2017_raw, prepared_dir, num_folds=4)


def _corrupt(raw):
  """Three bad files of different kinds; returns their paths."""
  examples, _ = isic.list_examples("isic2017", raw)
  a, b, c = examples[0], examples[5], examples[-1]
  with open(a.image, "r+b") as f:
    f.truncate(os.path.getsize(a.image) // 2)
  mask = np.asarray(Image.open(b.lesion_mask)).copy()
  mask[:2] = 7
  Image.fromarray(mask).save(b.lesion_mask)
  os.remove(c.features)
  return a.image, b.lesion_mask, c.features


def test_failed_prepare_reports_every_bad_file_and_keeps_the_old_dataset(
    isic2017_raw, tmp_path):
  raw = str(tmp_path / "raw")
  shutil.copytree(isic2017_raw, raw)
  prepared_dir = str(tmp_path / "prepared")
  path = prepare.prepare("isic2017", raw, prepared_dir)
  good = prepare.load(prepared_dir, "isic2017")
  bad_files = _corrupt(raw)
  with pytest.raises(DatasetError) as info:
    prepare.prepare("isic2017", raw, prepared_dir, overwrite=True)
  named = [p for p, _ in info.value.problems]
  assert all(p in named for p in bad_files), info.value
  message = str(info.value)
  assert "truncated" in message and "not binary" in message and "missing features JSON" in message
  assert _leftovers(prepared_dir) == []
  again = prepare.load(prepared_dir, "isic2017")  # the earlier good dataset is intact
  assert again.stats == good.stats and len(again.source("train")) == 24
  assert os.listdir(path) == os.listdir(good.path)


def test_decode_errors_alone_also_abort_the_build(isic2017_raw, tmp_path):
  raw = str(tmp_path / "raw")
  shutil.copytree(isic2017_raw, raw)
  examples, _ = isic.list_examples("isic2017", raw)
  for e in (examples[1], examples[30]):  # train and test images; listing stays clean
    mask = Image.open(e.lesion_mask)
    mask.resize((mask.width, mask.height + 1)).save(e.lesion_mask)
  prepared_dir = str(tmp_path / "prepared")
  with pytest.raises(DatasetError, match="2 problem") as info:
    prepare.prepare("isic2017", raw, prepared_dir)
  assert {p for p, _ in info.value.problems} == {examples[1].lesion_mask,
                                                 examples[30].lesion_mask}
  assert not os.path.exists(os.path.join(prepared_dir, "isic2017"))
  assert _leftovers(prepared_dir) == []


def test_overwrite_replaces_and_derived_splits_are_written(synthetic_isic, tmp_path):
  raw = synthetic_isic("isic2019", {"train": 40, "validation": 0, "test": 0})
  prepared_dir = str(tmp_path / "prepared")
  prepare.prepare("isic2019", raw, prepared_dir, seed=0)
  first = prepare.load(prepared_dir, "isic2019").splits
  assert set(first["splits"]) == set(schema.SPLITS)
  prepare.prepare("isic2019", raw, prepared_dir, seed=1, overwrite=True)
  second = prepare.load(prepared_dir, "isic2019")
  assert second.stats["config"]["seed"] == 1 and second.splits["splits"] != first["splits"]
  assert _leftovers(prepared_dir) == []
  r = second.source("test")[0]
  assert r["label"] >= 0 and r["site"] >= -1 and not r["has_lesion_mask"]
  # The derived split file reproduces the split through the raw readers as well.
  ids = sorted(x["id"] for x in isic.read_records(
      "isic2019", raw, "validation", splits={i: s for s, v in second.splits["splits"].items()
                                             for i in v}))
  assert ids == second.splits["splits"]["validation"]


def test_load_without_prepare_says_what_to_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="prepare"):
    prepare.load(str(tmp_path), "isic2017")


def test_split_settings_are_recorded_and_never_silently_reused(synthetic_isic, tmp_path):
  """CIN's 20% validation carve of ISIC 2016 is a setting recorded with the dataset: a
  dataset prepared with the layout's 1/8 is not reused for it (nor for protocol "cv")."""
  raw = synthetic_isic("isic2016", {"train": 40, "validation": 0, "test": 6})
  prepared_dir = str(tmp_path / "prepared")
  prepare.prepare("isic2016", raw, prepared_dir, num_folds=2)
  default = prepare.load(prepared_dir, "isic2016")
  assert default.stats["config"]["splits"] == {"protocol": "carved_test",
                                               "derived": {"validation": 0.125}}
  assert default.stats["splits"]["validation"]["num_images"] == 5
  for settings in ({"validation_fraction": 0.2}, {"protocol": "cv"}):
    with pytest.raises(ValueError, match="was prepared with .*delete it"):
      prepare.prepare("isic2016", raw, prepared_dir, num_folds=2, **settings)
  prepare.prepare("isic2016", raw, prepared_dir, num_folds=2, validation_fraction=0.2,
                  overwrite=True)
  fifth = prepare.load(prepared_dir, "isic2016")
  assert fifth.stats["splits"]["validation"]["num_images"] == 8
  assert fifth.splits["settings"] == {"protocol": "carved_test", "derived": {"validation": 0.2}}
  prepare.prepare("isic2016", raw, prepared_dir, num_folds=2, protocol="cv", overwrite=True)
  cv = prepare.load(prepared_dir, "isic2016")
  assert sorted(cv.stats["splits"]) == ["test", "train"]    # the official test stays
  assert len(cv.splits["folds"]) == 40 and set(cv.splits["folds"].values()) == {0, 1}
