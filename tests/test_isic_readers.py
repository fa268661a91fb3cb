"""The ISIC readers on synthetic data in every official layout, and every bad-input case."""

import collections
import json
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dermjax.data import isic
from dermjax.data import schema
from dermjax.data import synthetic
from dermjax.data.errors import DatasetError

NUM = {"train": 20, "validation": 6, "test": 8}
SIDES = {"min_side": 48, "max_side": 64}
MELANOMA_NAMES = ("malignant", "melanoma", "MEL")


def _truth(layout, num=NUM, **sides):
  """{id: (split token, diagnosis name, diagnosis index, metadata, drawn)} the generator drew."""
  names = [n for n, _, _ in synthetic._DIAGNOSES[layout]]
  return {i: (token, names[d], d, meta, drawn) for token, i, d, meta, drawn in
          synthetic.iter_examples(layout, num, **(sides or SIDES))}


def _all_records(layout, root, **kwargs):
  return {r["id"]: r for split in schema.SPLITS
          for r in isic.read_records(layout, root, split, **kwargs)}


def _copy(src, tmp_path):
  dst = str(tmp_path / "raw")
  shutil.copytree(src, dst)
  return dst


@pytest.mark.parametrize("layout", isic.LAYOUTS)
def test_every_layout_reads_back_what_the_generator_drew(layout, synthetic_isic):
  root = synthetic_isic(layout, NUM)
  truth = _truth(layout)
  records = _all_records(layout, root)
  assert sorted(records) == sorted(truth)
  counts = collections.Counter(r["split"] for r in records.values())
  assert set(counts) == set(schema.SPLITS) and sum(counts.values()) == sum(NUM.values())
  if layout in ("isic2017", "isic2018", "isic2018_task3"):  # official splits only
    assert counts == collections.Counter(NUM)

  with_masks = layout in ("isic2016", "isic2017", "isic2018")
  with_attributes = {"isic2017": 4, "isic2018": 5}.get(layout, 0)
  for i, r in records.items():
    token, name, index, meta, drawn = truth[i]
    h, w = drawn["image"].shape[:2]
    assert r["image"].dtype == np.uint8 and r["image"].shape == (h, w, 3)
    assert np.abs(r["image"].astype(int) - drawn["image"]).mean() < 6  # JPEG
    assert r["lesion_mask"].shape == (h, w) and r["attribute_masks"].shape == (
        h, w, schema.NUM_ATTRIBUTES)
    assert r["lesion_mask"].dtype == r["attribute_masks"].dtype == np.uint8
    assert bool(r["has_lesion_mask"]) == with_masks
    assert bool(r["has_attributes"]) == bool(with_attributes)
    if with_masks:
      np.testing.assert_array_equal(r["lesion_mask"], drawn["lesion_mask"])
    else:
      assert not r["lesion_mask"].any()
    np.testing.assert_array_equal(r["attribute_masks"][..., :with_attributes],
                                  drawn["attribute_masks"][..., :with_attributes])
    assert not r["attribute_masks"][..., with_attributes:].any()

    assert int(r["melanoma"]) == int(name in MELANOMA_NAMES)
    expected_label = int(name == "melanoma") if layout == "isic2020" else index
    assert int(r["label"]) == expected_label
    assert 0 <= r["label"] < len(isic.classes(layout))
    if layout == "isic2017":
      assert int(r["keratosis"]) == int(name == "seborrheic_keratosis")
    elif layout == "isic2020":
      assert int(r["keratosis"]) == int(name == "seborrheic keratosis")
    else:
      assert int(r["keratosis"]) == -1

    has_age = layout in ("isic2017", "isic2019", "isic2020")
    if has_age and meta["age"] != "":
      assert float(r["age"]) == meta["age"]
    else:
      assert math.isnan(r["age"])
    expected_sex = schema.SEXES.index(meta["sex"]) if has_age and meta["sex"] else -1
    assert int(r["sex"]) == expected_sex
    has_site = layout in ("isic2019", "isic2020")
    expected_site = schema.SITES.index(meta["site"]) if has_site and meta["site"] else -1
    assert int(r["site"]) == expected_site
    assert r["patient_id"] == (meta["patient"] if layout == "isic2020" else "")


def test_superpixel_attributes_decode_to_the_drawn_masks(synthetic_isic):
  """Indices go well above 256 and are decoded as R + (G << 8) + (B << 16)."""
  num = {"train": 2, "validation": 1, "test": 1}
  root = synthetic_isic("isic2017", num, min_side=240, max_side=300)
  truth = _truth("isic2017", num, min_side=240, max_side=300)
  examples, problems = isic.list_examples("isic2017", root)
  assert not problems and len(examples) == 4
  for e in examples:
    drawn = truth[e.id][4]
    superpixels = isic.read_superpixels(e.superpixels, drawn["image"].shape[:2])
    np.testing.assert_array_equal(superpixels, drawn["superpixels"])
    assert superpixels.max() > 256
    with open(e.features) as f:
      features = json.load(f)
    assert sorted(features) == sorted(isic.ATTRIBUTES_2017)
    assert all(len(v) == superpixels.max() + 1 for v in features.values())
    decoded = isic.superpixel_attributes(e.features, superpixels)
    np.testing.assert_array_equal(decoded, drawn["attribute_masks"][..., :4])
    # A uint8 decode (R + G * 256 overflowing) would pick wrong superpixels.
    assert not np.array_equal(
        np.asarray(Image.open(e.superpixels))[..., 0].astype(np.int32), superpixels)


def test_isic2020_reads_the_isic_hosted_naming_too(synthetic_isic, tmp_path):
  root = _copy(synthetic_isic("isic2020", NUM), tmp_path)
  kaggle = _all_records("isic2020", root)
  os.rename(os.path.join(root, "train.csv"),
            os.path.join(root, "ISIC_2020_Training_GroundTruth_v2.csv"))
  os.makedirs(os.path.join(root, "ISIC_2020_Training_JPEG"))
  os.rename(os.path.join(root, "jpeg", "train"), os.path.join(root, "ISIC_2020_Training_JPEG",
                                                              "train"))
  hosted = _all_records("isic2020", root)
  assert sorted(hosted) == sorted(kaggle)
  for i, r in hosted.items():
    assert r["split"] == kaggle[i]["split"] and r["label"] == kaggle[i]["label"]
    np.testing.assert_array_equal(r["image"], kaggle[i]["image"])


@pytest.mark.parametrize("layout", ["isic2019", "isic2020"])
def test_derived_splits_are_seeded_disjoint_and_stratified(layout, synthetic_isic):
  root = synthetic_isic(layout, {"train": 60, "validation": 0, "test": 0})
  examples, problems = isic.list_examples(layout, root)
  assert not problems
  a = isic.assign_splits(layout, examples, seed=0)
  assert a == isic.assign_splits(layout, examples, seed=0)
  assert a != isic.assign_splits(layout, examples, seed=1)
  by_split = collections.Counter(a.values())
  assert set(by_split) == set(schema.SPLITS) and sum(by_split.values()) == 60
  assert 8 <= by_split["test"] <= 16 and 4 <= by_split["validation"] <= 10
  melanoma = {e.id: e.melanoma for e in examples}
  for split in ("train", "test"):  # melanoma rate roughly preserved
    ids = [i for i, s in a.items() if s == split]
    overall = np.mean(list(melanoma.values()))
    assert abs(np.mean([melanoma[i] for i in ids]) - overall) < 0.15
  if layout == "isic2020":  # a patient's images stay in one split
    patients = collections.defaultdict(set)
    for e in examples:
      patients[e.patient_id].add(a[e.id])
    assert all(len(s) == 1 for s in patients.values())
  # An explicit split file wins over the seed.
  flipped = {i: "test" for i in a}
  assert len(list(isic.read_records(layout, root, "test", splits=flipped))) == 60


def test_folds_are_stratified():
  examples = [isic.Example(f"ISIC_{i:07d}", "train", "", label=int(i % 4 == 0)) for i in range(100)]
  folds = isic.assign_folds(examples, 5, seed=3)
  assert sorted(collections.Counter(folds.values()).values()) == [20] * 5
  positives = collections.Counter(folds[e.id] for e in examples if e.label == 1)
  assert sorted(positives.values()) == [5] * 5


def test_folds_of_tiny_sets_without_stratifiable_classes():
  """Six images in three classes of two (none fills five folds): grouped folds, all used."""
  examples = [isic.Example(f"ISIC_{i:07d}", "train", "", label=i % 3) for i in range(6)]
  folds = isic.assign_folds(examples, 5, seed=0)
  assert sorted(set(folds.values())) == [0, 1, 2, 3, 4]
  with pytest.raises(DatasetError, match="too few for 5 folds"):
    isic.assign_folds(examples[:4], 5)


# --- bad input ------------------------------------------------------------------------


@pytest.fixture
def raw2017(isic2017_raw, tmp_path):
  return _copy(isic2017_raw, tmp_path)


def _example(root, split="train", index=0, layout="isic2017"):
  examples, problems = isic.list_examples(layout, root)
  assert not problems
  return [e for e in examples if e.split == split][index]


def _problems(layout, root):
  examples, problems = isic.list_examples(layout, root)
  return examples, "\n".join(f"{p}: {w}" for p, w in problems)


def test_truncated_jpeg_names_the_file(raw2017):
  e = _example(raw2017)
  with open(e.image, "rb") as f:
    data = f.read()
  with open(e.image, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(DatasetError, match="truncated") as info:
    isic.load_example(e)
  assert e.image in str(info.value)
  with open(e.image, "wb") as f:
    f.write(b"not a jpeg at all")
  with pytest.raises(DatasetError, match="unreadable") as info:
    isic.load_example(e)
  assert info.value.problems[0][0] == e.image


def test_missing_mask_and_missing_json_name_the_file(raw2017):
  e, f = _example(raw2017), _example(raw2017, index=1)
  os.remove(e.lesion_mask)
  os.remove(f.features)
  examples, text = _problems("isic2017", raw2017)
  assert f"{e.lesion_mask}: missing lesion mask for {e.id}" in text
  assert f"{f.features}: missing features JSON for {f.id}" in text
  assert e.id not in {x.id for x in examples} and f.id not in {x.id for x in examples}
  with pytest.raises(DatasetError, match="missing lesion mask"):
    next(isic.read_records("isic2017", raw2017, "train"))


def test_missing_attribute_png_2018(synthetic_isic, tmp_path):
  root = _copy(synthetic_isic("isic2018", NUM), tmp_path)
  e = _example(root, layout="isic2018")
  os.remove(e.attribute_masks[3])
  _, text = _problems("isic2018", root)
  assert f"{e.attribute_masks[3]}: missing streaks mask for {e.id}" in text


def test_mask_size_mismatch_names_the_file(raw2017):
  e = _example(raw2017)
  mask = Image.open(e.lesion_mask)
  mask.resize((mask.width + 3, mask.height)).save(e.lesion_mask)
  with pytest.raises(DatasetError, match="differs from its image") as info:
    isic.load_example(e)
  assert info.value.problems[0][0] == e.lesion_mask


def test_non_binary_mask_names_the_file(raw2017):
  e = _example(raw2017)
  mask = np.asarray(Image.open(e.lesion_mask)).copy()
  mask[0, :5] = 128
  Image.fromarray(mask).save(e.lesion_mask)
  with pytest.raises(DatasetError, match="not binary") as info:
    isic.load_example(e)
  assert info.value.problems[0][0] == e.lesion_mask


def test_short_or_bad_features_json_names_the_file(raw2017):
  e = _example(raw2017)
  with open(e.features) as f:
    features = json.load(f)
  features["streaks"] = features["streaks"][:-1]
  with open(e.features, "w") as f:
    json.dump(features, f)
  with pytest.raises(DatasetError, match="'streaks' has .* entries but the superpixel") as info:
    isic.load_example(e)
  assert info.value.problems[0][0] == e.features
  features["streaks"] = [2] * (len(features["streaks"]) + 1)
  with open(e.features, "w") as f:
    json.dump(features, f)
  with pytest.raises(DatasetError, match="other than 0 and 1"):
    isic.load_example(e)
  del features["streaks"]
  with open(e.features, "w") as f:
    json.dump(features, f)
  with pytest.raises(DatasetError, match="missing key 'streaks'"):
    isic.load_example(e)


def test_csv_missing_column_names_the_file(raw2017):
  path = os.path.join(raw2017, "ISIC-2017_Validation_Part3_GroundTruth.csv")
  with open(path) as f:
    lines = f.read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join(",".join(l.split(",")[:2]) for l in lines) + "\n")
  _, text = _problems("isic2017", raw2017)
  assert f"{path}: missing column(s) ['seborrheic_keratosis']" in text


def test_csv_ids_that_match_no_image_are_named(raw2017):
  path = os.path.join(raw2017, "ISIC-2017_Test_v2_Part3_GroundTruth.csv")
  with open(path, "a") as f:
    f.write("ISIC_9999999,0.0,1.0\n")
  meta = os.path.join(raw2017, "ISIC-2017_Training_Data", "ISIC-2017_Training_Data_metadata.csv")
  with open(meta, "a") as f:
    f.write("ISIC_8888888,55,female\n")
  _, text = _problems("isic2017", raw2017)
  assert f"{path}: 1 id(s) match no image: ISIC_9999999" in text
  assert f"{meta}: 1 id(s) match no image: ISIC_8888888" in text


def test_bad_csv_values_and_unlabelled_images(synthetic_isic, tmp_path):
  root = _copy(synthetic_isic("isic2016", NUM), tmp_path)
  path = os.path.join(root, "ISBI2016_ISIC_Part3_Training_GroundTruth.csv")
  with open(path) as f:
    lines = f.read().splitlines()
  lines[0] = lines[0].split(",")[0] + ",maybe"
  with open(path, "w") as f:
    f.write("\n".join(lines[:-1]) + "\n")  # and drop the last image's row
  _, text = _problems("isic2016", root)
  assert f"{path}: 1 bad row(s): line 1:" in text and "maybe" in text
  assert f"{path}: no row for 1 image(s)" in text


def test_missing_directory_and_unknown_layout(tmp_path):
  _, problems = isic.list_examples("isic2019", str(tmp_path))
  assert problems == [(os.path.join(str(tmp_path), "ISIC_2019_Training_Input"),
                       "missing image directory")]
  with pytest.raises(ValueError, match="Unknown ISIC layout"):
    isic.list_examples("isic2021", str(tmp_path))


# --- groups, official test sets, protocols --------------------------------------------


def _example_list(n, **columns):
  """n isic.Examples (alternating labels) with per-example column values (lists)."""
  return [isic.Example(f"ISIC_{i:07d}", "train", "", label=i % 2,
                       **{k: v[i] for k, v in columns.items()}) for i in range(n)]


def _together(assignment, examples, key):
  """Whether every value of `key` has one assignment (split / fold)."""
  seen = collections.defaultdict(set)
  for e in examples:
    if key(e):
      seen[key(e)].add(assignment[e.id])
  return all(len(s) == 1 for s in seen.values())


def test_lesions_patients_and_duplicates_stay_in_one_split_and_fold():
  """Lesion ids (ISIC 2019), patient ids (2020), duplicate pairs (2020's Duplicates CSV) and
  their chains form one group; an image with none is alone."""
  n = 60
  lesion = [f"IL_{i // 3}" if i < 30 else "" for i in range(n)]
  patient = [f"IP_{i // 4}" if i >= 40 else "" for i in range(n)]
  examples = _example_list(n, lesion_id=lesion, patient_id=patient)
  for a, b in ((30, 59), (31, 2), (32, 33)):   # duplicates across patients and lesions
    examples[a].duplicates += (examples[b].id,)
    examples[b].duplicates += (examples[a].id,)
  group = isic.groups(examples)
  assert group[0] == group[1] == group[2] != group[3]       # lesion IL_0
  assert group[31] == group[2] and group[30] == group[59] == group[56]   # duplicates chain on
  assert group[34] != group[35]                             # neither lesion nor patient
  for seed in range(3):
    folds = isic.assign_folds(examples, 5, seed=seed)
    splits = isic.assign_splits("isic2019", examples, seed=seed)
    for assignment in (folds, splits):
      assert _together(assignment, examples, lambda e: e.lesion_id)
      assert _together(assignment, examples, lambda e: e.patient_id)
      assert all(assignment[e.id] == assignment[d] for e in examples for d in e.duplicates)


def test_isic2019_lesion_ids_are_read_and_kept_together(synthetic_isic):
  root = synthetic_isic("isic2019", {"train": 60, "validation": 0, "test": 0})
  examples, problems = isic.list_examples("isic2019", root)
  assert not problems
  assert [e.lesion_id for e in examples[:6]] == ["IL_0000000"] * 3 + ["IL_0000003"] * 2 + [
      "IL_0000005"]
  splits = isic.assign_splits("isic2019", examples, seed=0)
  assert _together(splits, examples, lambda e: e.lesion_id)
  train = [e for e in examples if splits[e.id] == "train"]
  assert _together(isic.assign_folds(train, 5, seed=0), train, lambda e: e.lesion_id)


def test_isic2019_official_test_split_replaces_the_carved_one(synthetic_isic, tmp_path):
  root = _copy(synthetic_isic("isic2019", NUM), tmp_path)
  official = _truth("isic2019")
  test_ids = sorted(i for i, (token, *_) in official.items() if token == "Test")
  assert len(test_ids) == NUM["test"]
  records = _all_records("isic2019", root)
  assert sorted(i for i, r in records.items() if r["split"] == "test") == test_ids
  for i in test_ids:   # labels from ISIC_2019_Test_GroundTruth.csv, metadata from Test_Metadata
    assert records[i]["label"] == official[i][2]
  assert collections.Counter(r["split"] for r in records.values())["validation"] > 0
  # Without the published ground truth the test images are not read; a test split is carved.
  os.remove(os.path.join(root, "ISIC_2019_Test_GroundTruth.csv"))
  examples, problems = isic.list_examples("isic2019", root)
  assert not problems and not set(test_ids) & {e.id for e in examples}
  carved = isic.assign_splits("isic2019", examples, seed=0)
  assert collections.Counter(carved.values())["test"] >= 4


def test_isic2020_unzipped_in_place_and_duplicates(synthetic_isic, tmp_path):
  """ISIC_2020_Training_JPEG.zip unzipped in place gives train/; the Duplicates CSV keeps
  each pair in one split and fold (both images stay); unknown ids in it are named."""
  root = _copy(synthetic_isic("isic2020", {"train": 80, "validation": 0, "test": 0}), tmp_path)
  os.rename(os.path.join(root, "train.csv"),
            os.path.join(root, "ISIC_2020_Training_GroundTruth_v2.csv"))
  os.rename(os.path.join(root, "jpeg", "train"), os.path.join(root, "train"))
  os.rmdir(os.path.join(root, "jpeg"))
  examples, problems = isic.list_examples("isic2020", root)
  assert not problems and len(examples) == 80
  pairs = [(examples[i].id, examples[79 - i].id) for i in range(0, 40, 3)]  # other patients
  path = os.path.join(root, "ISIC_2020_Training_Duplicates.csv")
  with open(path, "w") as f:
    f.write("image_name_1,image_name_2\n" + "".join(f"{a},{b}\n" for a, b in pairs))
  examples, problems = isic.list_examples("isic2020", root)
  assert not problems and len(examples) == 80
  for seed in range(2):
    splits = isic.assign_splits("isic2020", examples, seed=seed)
    assert all(splits[a] == splits[b] for a, b in pairs)
    train = [e for e in examples if splits[e.id] == "train"]
    folds = isic.assign_folds(train, 3, seed=seed)
    assert all(folds[a] == folds[b] for a, b in pairs if a in folds)
  with open(path, "a") as f:
    f.write("ISIC_9999999,ISIC_0000001\nISIC_0000002,\n")
  _, text = _problems("isic2020", root)
  assert f"{path}: 1 id(s) match no image: ISIC_9999999" in text
  assert f"{path}: 1 bad row(s): line {len(pairs) + 3}: ISIC_0000002: too few fields" in text


def test_a_short_csv_row_names_its_id(raw2017):
  path = os.path.join(raw2017, "ISIC-2017_Validation_Part3_GroundTruth.csv")
  with open(path) as f:
    lines = f.read().splitlines()
  short_id = lines[3].split(",")[0]
  lines[3] = short_id + ",0.0"
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  _, text = _problems("isic2017", raw2017)
  assert f"{path}: 1 bad row(s): line 4: {short_id}: too few fields" in text


def test_validation_fraction_and_protocol_settings(synthetic_isic):
  """The derived validation fraction is a setting (1/k); "cv" carves nothing."""
  root = synthetic_isic("isic2016", {"train": 80, "validation": 0, "test": 10})
  examples, problems = isic.list_examples("isic2016", root)
  assert not problems
  count = lambda **kw: collections.Counter(isic.assign_splits("isic2016", examples, **kw).values())
  assert count()["validation"] == 10                           # the layout's 1/8
  assert count(validation_fraction=0.2)["validation"] == 16    # CIN's 20%
  assert count(protocol="cv") == {"train": 80, "test": 10}
  assert isic.split_settings("isic2016", validation_fraction=0.2) == {
      "protocol": "carved_test", "derived": {"validation": 0.2}}
  with pytest.raises(ValueError, match="1/k"):
    isic.derived_splits("isic2016", validation_fraction=0.15)
  with pytest.raises(ValueError, match="official validation split"):
    isic.derived_splits("isic2017", validation_fraction=0.2)
  with pytest.raises(ValueError, match="data.protocol"):
    isic.derived_splits("isic2020", protocol="nested")
