"""The synthetic difficulty dial: easy unchanged, hard deterministic, evidence where the
label is, global cues label-free (dermjax.data.synthetic, dermjax.data.synthetic_hard)."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from dermjax.data import isic
from dermjax.data import loader
from dermjax.data import synthetic
from dermjax.data import synthetic_hard

SMALL = {"train": 3, "validation": 1, "test": 2}
# sha256 of the easy preset's drawn arrays and metadata (seed 7, SMALL, 32-48 px), computed
# with the generator as it was before the difficulty dial existed (main at b67b164). ISIC
# 2019's test images are now written as its official test split (token "Test", the drawn
# arrays unchanged: mapping "Test" back to "Training" gives b67b164's digest) and its
# training metadata share lesion ids (synthetic.shared_lesion), so its two digests are new.
EASY_ARRAYS = {
    "isic2016": "dcae949b228724f078a778a3802c9234758f70044487b7ef46981e337e304b1e",
    "isic2017": "58db4802983f40aa210defb2679fbc57d1167da453a9b379079a54319616f3da",
    "isic2018": "3e33b9356b41e81ae5b962691aaa2251984abb9cd24ef4b2473a4f16f6db45a0",
    "isic2018_task3": "5ff1f8629987af166aa1d0ca31c2582e4ba0fc9b0a0d28dd19d987e487688f82",
    "isic2019": "5f48121c2c7ab895eb542c574c5ce462ed4310f5611dea11c786aa864827895c",
    "isic2020": "3342318bc6034d27f96cf870880e2638fc50b87c04a311a35168c43cbf92a3aa",
}
# ... and of the written files (names + bytes; JPEG bytes only for isic2017, the rest
# without .jpg so a libjpeg change cannot fail them).
EASY_FILES_WITH_JPEG = {
    "isic2017": "f7989e961b516217af4fae919af004450f44e108e7fe8af61446905d63aab085"}
EASY_FILES = {
    "isic2016": "d85ec1a1e5697a9a35199d6683837e98c1aa287976d84fb3d161c16d8c468bf9",
    "isic2018": "59d44a541947cebe4dcf47aa3571732d3be36cc6d41467844315c77bc16ccb02",
    "isic2019": "e32d1d9b5ae0f62c1b87fb7f70949c4834c935f8fd709c683f1833f716631109",
    "isic2020": "b1ff6253f356eda903161a1f1ee532bd437cb3a3180eb4e230b854ed1e22b622",
}


def _array_digest(layout, **kw):
  h = hashlib.sha256()
  for s, i, d, meta, drawn in synthetic.iter_examples(layout, SMALL, seed=7, min_side=32,
                                                      max_side=48, **kw):
    h.update(f"{s}{i}{d}{json.dumps(meta, sort_keys=True)}".encode())
    for k in ("image", "lesion_mask", "attribute_masks", "superpixels"):
      h.update(np.ascontiguousarray(drawn[k]).tobytes())
    h.update(json.dumps(drawn["features"], sort_keys=True).encode())
  return h.hexdigest()


def _tree_digest(root, jpeg):
  h = hashlib.sha256()
  for directory, _, files in sorted(os.walk(root)):
    for f in sorted(x for x in files if jpeg or not x.endswith(".jpg")):
      path = os.path.join(directory, f)
      h.update(os.path.relpath(path, root).encode())
      with open(path, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


@pytest.mark.parametrize("layout", sorted(EASY_ARRAYS))
def test_easy_preset_is_unchanged(layout, tmp_path):
  assert _array_digest(layout) == EASY_ARRAYS[layout]
  assert _array_digest(layout, difficulty="easy") == EASY_ARRAYS[layout]
  if layout in EASY_FILES or layout in EASY_FILES_WITH_JPEG:
    synthetic.write_synthetic(layout, str(tmp_path), num_images=SMALL, seed=7, min_side=32,
                              max_side=48)
    jpeg = layout in EASY_FILES_WITH_JPEG
    want = (EASY_FILES_WITH_JPEG if jpeg else EASY_FILES)[layout]
    assert _tree_digest(str(tmp_path), jpeg) == want
    assert not os.path.exists(tmp_path / isic.EVIDENCE_DIR)


def test_difficulty_values():
  assert synthetic.difficulty_strength("easy") is None
  assert synthetic.difficulty_strength("hard") == synthetic.HARD_STRENGTH
  assert synthetic.difficulty_strength("0.25") == 0.25
  for bad in ("medium", "1.5", -0.1):
    with pytest.raises(ValueError):
      synthetic.difficulty_strength(bad)


def test_hard_is_deterministic_by_seed():
  hard = dict(difficulty="hard")
  assert _array_digest("isic2017", **hard) == _array_digest("isic2017", **hard)
  a = [d["evidence_mask"] for *_, d in synthetic.iter_examples("isic2017", SMALL, seed=1,
                                                               min_side=32, max_side=48, **hard)]
  b = [d["evidence_mask"] for *_, d in synthetic.iter_examples("isic2017", SMALL, seed=2,
                                                               min_side=32, max_side=48, **hard)]
  assert any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a, b))
  assert _array_digest("isic2017", **hard) != EASY_ARRAYS["isic2017"]


@pytest.mark.parametrize("malignant", [True, False])
def test_evidence_is_inside_the_lesion_and_covers_every_drawn_structure(malignant):
  for seed in range(12):
    rng = np.random.default_rng(seed)
    drawn = synthetic_hard.draw_hard(rng, 60, 52, malignant=malignant, strength=1.0,
                                     return_layers=True)
    evidence = drawn["evidence_mask"] > 0
    assert evidence.any()
    assert not (evidence & (drawn["lesion_mask"] == 0)).any()
    changed = np.any(np.abs(drawn["after_structures"] - drawn["before_structures"]) > 1e-3, -1)
    assert changed.any()
    assert not (changed & ~evidence).any()
    # Named structures are ISIC superpixel classes on whole superpixels around the evidence.
    attributes = drawn["attribute_masks"].any(-1)
    if malignant:  # no milia-like cysts or globules on melanomas
      assert drawn["attribute_masks"][..., [2, 4]].sum() == 0
    else:
      assert drawn["attribute_masks"][..., 3].sum() == 0     # no streaks on benign lesions
      assert not (evidence & ~attributes).any()              # benign sites always have a class


def test_written_evidence_masks_are_read_back(tmp_path):
  out = synthetic.write_synthetic("isic2017", str(tmp_path), num_images=SMALL, seed=3,
                                  min_side=40, max_side=48, difficulty="hard")
  drawn = {i: d for _, i, _, _, d in synthetic.iter_examples(
      "isic2017", SMALL, seed=3, min_side=40, max_side=48, difficulty="hard")}
  examples, problems = isic.list_examples("isic2017", out)
  assert not problems and len(examples) == sum(SMALL.values())
  for example in examples:
    record = isic.load_example(example)
    assert record["has_evidence_mask"]
    np.testing.assert_array_equal(record["evidence_mask"], drawn[example.id]["evidence_mask"])
    path = os.path.join(out, isic.EVIDENCE_DIR, example.id + "_evidence.png")
    assert set(np.unique(np.asarray(Image.open(path)))) <= {0, 255}
  # Without the folder (any real ISIC set) records say they have none.
  os.rename(os.path.join(out, isic.EVIDENCE_DIR), os.path.join(out, "elsewhere"))
  record = isic.load_example(isic.list_examples("isic2017", out)[0][0])
  assert not record["has_evidence_mask"] and not record["evidence_mask"].any()


def _dataset(difficulty, n=200, seed=0):
  """Global features, labels (melanoma as written) and drawings of n tiny isic2016 images."""
  features, labels, drawings = [], [], []
  for _, _, diagnosis, _, d in synthetic.iter_examples(
      "isic2016", {"train": n, "validation": 0, "test": 0}, seed=seed, min_side=48,
      max_side=64, difficulty=difficulty):
    image, lesion = d["image"].astype(np.float32), d["lesion_mask"] > 0
    perimeter = (lesion ^ np.roll(lesion, 1, 0)).sum() + (lesion ^ np.roll(lesion, 1, 1)).sum()
    features.append([lesion.mean(), *image.reshape(-1, 3).mean(0), *image[lesion].mean(0),
                     perimeter ** 2 / (4 * np.pi * lesion.sum())])
    labels.append(diagnosis)
    drawings.append(d)
  return np.array(features), np.array(labels), drawings


def _cv_auc(x, y):
  x = (x - x.mean(0)) / (x.std(0) + 1e-9)
  p = cross_val_predict(LogisticRegression(max_iter=2000), x, y, method="predict_proba",
                        cv=StratifiedKFold(5, shuffle=True, random_state=0))[:, 1]
  return roc_auc_score(y, p)


def _contrast(drawings, mode):
  """Histogram of local luminance differences inside the lesion: the whole image, the
  evidence blanked (set to its mean), or only the evidence (the rest set to its mean)."""
  out = []
  for d in drawings:
    image = d["image"].astype(np.float32).mean(-1)
    evidence, lesion = d["evidence_mask"] > 0, d["lesion_mask"] > 0
    if mode == "blank":
      image = np.where(evidence, image[evidence].mean(), image)
    elif mode == "only":
      image = np.where(evidence, image, image[lesion & ~evidence].mean())
    grad = np.abs(np.diff(image, axis=0))[:, :-1] + np.abs(np.diff(image, axis=1))[:-1]
    inside = lesion[:-1, :-1]
    out.append(np.histogram(grad[inside], bins=[0, 2, 4, 8, 16, 32, 64, 1e9])[0] / inside.sum())
  return np.array(out)


def test_global_statistics_do_not_separate_hard_classes_but_the_evidence_does():
  x, y, drawings = _dataset("hard")
  assert 0.2 < y.mean() < 0.5
  # Lesion area, mean image and lesion colour, shape irregularity: near chance on hard ...
  assert abs(_cv_auc(x, y) - 0.5) < 0.15
  # ... the label is in the evidence: local contrast there separates, blanked it does not.
  assert _cv_auc(_contrast(drawings, "only"), y) > 0.8
  assert abs(_cv_auc(_contrast(drawings, "blank"), y) - 0.5) < 0.15
  # The same global features separate the easy preset (the test can fail).
  x_easy, y_easy, _ = _dataset("easy", n=100)
  assert _cv_auc(x_easy, y_easy) > 0.9


def test_ablate_evidence_on_a_hand_made_image():
  image = np.zeros((8, 8, 3), np.uint8)      # skin 0 ...
  image[1:7, 1:7] = 50                       # ... the lesion 50 ...
  image[1, 1:7] = 80                         # ... with a lighter top row ...
  image[4, 4] = 250                          # ... and one evidence pixel
  lesion = (image[..., 0] > 0).astype(np.uint8)
  evidence = np.zeros((8, 8), np.uint8)
  evidence[4, 4] = 1
  grown = np.zeros((8, 8), bool)
  grown[3:6, 3:6] = True                     # one pixel around the evidence
  rest = (lesion > 0) & ~grown
  rest_colour = np.round(image[rest].mean(0)).astype(np.uint8)   # (6 * 80 + 21 * 50) / 27
  np.testing.assert_array_equal(rest_colour, 57)
  blank = loader.ablate_evidence(image, lesion, True, evidence, True, "blank")
  np.testing.assert_array_equal(blank[grown], rest_colour[None].repeat(9, 0))
  np.testing.assert_array_equal(blank[~grown], image[~grown])
  only = loader.ablate_evidence(image, lesion, True, evidence, True, "only")
  np.testing.assert_array_equal(only[grown], image[grown])
  np.testing.assert_array_equal(only[rest], rest_colour[None].repeat(rest.sum(), 0))
  np.testing.assert_array_equal(only[lesion == 0], 0)                 # skin untouched
  # Where the grown rim leaves the lesion, "blank" paints skin colour.
  edge = np.zeros((8, 8), np.uint8)
  edge[1, 1] = 1
  blank = loader.ablate_evidence(image, lesion, True, edge, True, "blank")
  np.testing.assert_array_equal(blank[0, 0:3], 0)
  corner = np.zeros((8, 8), bool)
  corner[0:3, 0:3] = True
  assert (blank[1:3, 1:3] == np.round(image[(lesion > 0) & ~corner].mean(0))).all()
  assert loader.ablate_evidence(image, lesion, True, evidence, True, "none") is image
  # Without an evidence mask: "blank" leaves the image, "only" flattens the lesion.
  assert loader.ablate_evidence(image, lesion, True, 0 * evidence, False, "blank") is image
  flat = loader.ablate_evidence(image, lesion, True, 0 * evidence, False, "only")
  assert len(np.unique(flat[lesion > 0].reshape(-1, 3), axis=0)) == 1
  with pytest.raises(ValueError, match="evidence_ablation"):
    loader.ablate_evidence(image, lesion, True, evidence, True, "hide")


def test_config_switch_evidence_ablation_removes_or_keeps_the_label():
  """data.evidence_ablation, through the example loader: a classifier of local contrast
  separates the classes on "none" and "only" images and is at chance on "blank" ones."""
  _, y, drawings = _dataset("hard")
  records = [{"id": str(i), "image": d["image"], "lesion_mask": d["lesion_mask"],
              "attribute_masks": d["attribute_masks"], "evidence_mask": d["evidence_mask"],
              "has_evidence_mask": True, "has_lesion_mask": True, "has_attributes": True,
              "melanoma": int(label)} for i, (d, label) in enumerate(zip(drawings, y))]

  def contrast(mode):
    examples = loader.ExampleLoader(records, 48, 48, "resize_center_crop", 1.0, "melanoma",
                                    mode)
    return _contrast([{"image": e["image"], "lesion_mask": e["masks"][..., 0],
                       "evidence_mask": e["evidence_mask"]}
                      for e in map(examples, range(len(records)))], "whole")

  assert _cv_auc(contrast("none"), y) > 0.6    # diluted by the rest of the lesion
  assert _cv_auc(contrast("only"), y) > 0.8
  assert abs(_cv_auc(contrast("blank"), y) - 0.5) < 0.15


def test_a_bad_evidence_ablation_fails_before_any_data_is_written(tmp_path):
  from dermjax import config_lib, input_pipeline, steps  # pylint: disable=g-import-not-at-top
  data = config_lib.data_config()
  data.evidence_ablation = "hide"
  data.synthetic_dir = str(tmp_path / "synthetic")
  with pytest.raises(ValueError, match="data.evidence_ablation must be one of"):
    input_pipeline.create_datasets(data, mesh=steps.create_mesh(), workdir=str(tmp_path))
  assert not os.listdir(tmp_path)


def test_label_noise_rate():
  flips = total = 0
  for _, _, diagnosis, _, d in synthetic.iter_examples(
      "isic2016", {"train": 600, "validation": 0, "test": 0}, seed=5, min_side=16,
      max_side=20, difficulty="hard"):
    flips += int(d["malignant_drawn"] != (diagnosis == 1))
    total += 1
  assert 0.005 < flips / total < 0.07
