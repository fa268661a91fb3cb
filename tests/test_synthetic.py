"""The synthetic ISIC generator: determinism, sizes, superpixels, attributes drawn where
their masks say, and a melanoma signal a small model can learn."""

import filecmp
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from dermjax.data import isic
from dermjax.data import schema
from dermjax.data import synthetic

MILIA, GLOBULE, STREAK = (238, 228, 195), (62, 36, 26), (50, 43, 45)


def _drawn(n, layout="isic2018", **kwargs):
  kwargs = {"min_side": 64, "max_side": 96, **kwargs}
  return list(synthetic.iter_examples(layout, {"train": n, "validation": 0, "test": 0},
                                      **kwargs))


def _same_tree(a, b):
  cmp = filecmp.dircmp(a, b)
  if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
    return False
  return all(_same_tree(os.path.join(a, d), os.path.join(b, d)) for d in cmp.common_dirs)


def test_deterministic_from_the_seed(tmp_path):
  num = {"train": 4, "validation": 2, "test": 2}
  a = synthetic.write_synthetic("isic2017", str(tmp_path / "a"), num_images=num, min_side=40,
                                max_side=56)
  b = synthetic.write_synthetic("isic2017", str(tmp_path / "b"), num_images=num, min_side=40,
                                max_side=56)
  c = synthetic.write_synthetic("isic2017", str(tmp_path / "c"), num_images=num, seed=1,
                                min_side=40, max_side=56)
  filecmp.clear_cache()
  assert _same_tree(a, b)
  assert not _same_tree(a, c)


def test_images_are_non_square_of_varying_size():
  shapes = [d["image"].shape for _, _, _, _, d in _drawn(30, min_side=50, max_side=90)]
  assert all(50 <= h <= 90 and 50 <= w <= 90 and h != w and c == 3 for h, w, c in shapes)
  assert len(set(shapes)) > 20


def test_superpixels_at_default_size_go_well_above_256():
  rng = np.random.default_rng(0)
  drawn = synthetic.draw_lesion(rng, 240, 400, "melanoma")
  sp = drawn["superpixels"]
  assert sp.dtype == np.int32 and 400 < sp.max() < 1200
  np.testing.assert_array_equal(np.unique(sp), np.arange(sp.max() + 1))  # every index used
  assert all(len(v) == sp.max() + 1 for v in drawn["features"].values())


def test_attributes_are_superpixel_unions_drawn_exactly_inside_their_masks():
  found, checked = np.zeros(schema.NUM_ATTRIBUTES, int), 0
  for _, _, diagnosis, _, d in _drawn(40):
    sp, masks, image = d["superpixels"], d["attribute_masks"].astype(bool), d["image"]
    assert (masks.sum(-1) <= 1).all()  # disjoint
    interior = d["lesion_mask"].astype(bool)
    for _ in range(3):  # erode: away from the lesion's edge
      interior[1:-1, 1:-1] &= (interior[:-2, 1:-1] & interior[2:, 1:-1] & interior[1:-1, :-2]
                               & interior[1:-1, 2:])
    plain = interior & ~masks.any(-1)
    uniform = diagnosis == 1  # NV: a uniformly brown lesion (no melanoma colour blobs)
    for k, name in enumerate(schema.ATTRIBUTES):
      m = masks[..., k]
      # Each superpixel is wholly in or out, and the features list marks exactly those.
      share = np.bincount(sp.ravel(), weights=m.ravel(), minlength=sp.max() + 1)
      inside = share > 0
      np.testing.assert_array_equal(share[inside], np.bincount(sp.ravel())[inside])
      if k < 4:
        np.testing.assert_array_equal(np.asarray(d["features"][name], bool), inside)
      found[k] += m.any()
      if not m.any():
        continue
      colour = {"milia_like_cyst": MILIA, "globules": GLOBULE, "streaks": STREAK}.get(name)
      if colour is not None:  # the pattern's colour appears inside the mask only
        hit = (image == colour).all(-1)
        assert hit[m].any() and not hit[~m].any(), name
      elif uniform and plain.sum() > 50:  # networks: strong local contrast inside only
        grad = np.abs(np.diff(image.astype(float).mean(-1), axis=1))
        assert grad[m[:, 1:]].mean() > 2 * grad[plain[:, 1:]].mean(), name
        checked += 1
  assert (found > 0).all() and checked >= 3, (found, checked)


def test_melanoma_is_learnable_at_low_resolution():
  """A linear model on 8x8 thumbnails separates melanoma: a CNN at 64 px has it easy."""
  examples = _drawn(160, layout="isic2017")
  x = np.stack([np.asarray(Image.fromarray(d["image"]).resize((8, 8), Image.BILINEAR),
                           np.float32).ravel() / 255 for _, _, _, _, d in examples])
  y = np.array([int(diagnosis == 1) for _, _, diagnosis, _, _ in examples])
  assert 0.2 <= y.mean() <= 0.35
  p = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=4, method="predict_proba")
  assert roc_auc_score(y, p[:, 1]) > 0.9


@pytest.mark.parametrize("layout", ["isic2019", "isic2016"])
def test_cli_writes_a_readable_dataset(layout, tmp_path):
  out = str(tmp_path / layout)
  synthetic.main([f"--layout={layout}", f"--out={out}", "--num_train=12", "--num_validation=2",
                  "--num_test=4", "--min_side=32", "--max_side=40"])
  examples, problems = isic.list_examples(layout, out)
  assert not problems and len(examples) == 18


def test_isic2020_metadata_has_missing_values_and_an_age_signal(tmp_path):
  """ISIC 2020 (read back by the real reader): ages, sexes, sites go missing, and age alone
  ranks melanoma well (a metadata model has something to learn); ISIC 2019's age does not."""
  def listed(layout):
    out = str(tmp_path / layout)
    synthetic.main([f"--layout={layout}", f"--out={out}", "--num_train=150", "--num_validation=0",
                    "--num_test=0", "--min_side=24", "--max_side=28"])
    examples, problems = isic.list_examples(layout, out)
    assert not problems and len(examples) == 150
    return examples

  examples = listed("isic2020")
  age = np.array([e.age for e in examples])
  melanoma = np.array([e.melanoma for e in examples])
  assert np.isnan(age).any() and any(e.sex == -1 for e in examples)
  assert any(e.site == -1 for e in examples) and all(e.patient_id for e in examples)
  known = ~np.isnan(age)
  assert roc_auc_score(melanoma[known], age[known]) > 0.9
  examples = listed("isic2019")
  age, melanoma = np.array([e.age for e in examples]), np.array([e.label == 0 for e in examples])
  known = ~np.isnan(age)
  assert roc_auc_score(melanoma[known], age[known]) < 0.75
