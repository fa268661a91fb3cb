"""Attention-map Jaccard (AttnMel Table 3): normalise, binarise, Jaccard, split report."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax.metrics import attention


def test_minmax_normalize_and_binarize_per_map():
  maps = np.array([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]], np.float32)
  norm = attention.minmax_normalize(maps)
  np.testing.assert_allclose(norm[0], [[0.0, 0.25], [0.5, 1.0]])
  np.testing.assert_array_equal(norm[1], np.zeros((2, 2)))  # constant map -> zeros
  np.testing.assert_array_equal(attention.binarize(maps)[0], [[0, 0], [1, 1]])  # >= 0.5
  assert attention.binarize(maps).dtype == np.float32


def test_jaccard_values_and_empty_convention():
  pred = np.zeros((3, 4, 4), np.float32)
  target = np.zeros((3, 4, 4), np.float32)
  pred[0, :2] = 1            # 8 pixels
  target[0, 1:3] = 1         # 8 pixels, 4 shared -> 4 / 12
  pred[1, 0, 0] = 1          # no overlap -> 0
  target[1, 3, 3] = 1        # example 2: both empty -> 1
  np.testing.assert_allclose(attention.jaccard(pred, target), [1 / 3, 0.0, 1.0])
  inter, union = attention.intersection_union(pred, target)
  np.testing.assert_array_equal(inter, [4, 0, 0])
  np.testing.assert_array_equal(union, [12, 2, 0])


def test_numpy_and_jitted_jax_agree():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(4, 8, 8)).astype(np.float32)
  target = (rng.random((4, 8, 8)) > 0.6).astype(np.float32)
  host = attention.jaccard(attention.binarize(maps), target)
  device = jax.jit(lambda m, t: attention.jaccard(attention.binarize(m), t))(maps, target)
  assert isinstance(host, np.ndarray) and isinstance(device, jax.Array)
  np.testing.assert_allclose(np.asarray(device), host, rtol=1e-6)


def test_map_jaccard_arrays_upsamples_to_the_mask():
  # A 4-wide map [1, 1, 0, 0] upsampled x2 (half-pixel centres) is >= 0.5 on exactly the
  # left 4 of 8 columns: a lesion mask on the left half gives Jaccard 1, on the left
  # quarter 2 / 4, and a mask that is not ground truth is reported but flagged.
  heat = np.tile(np.array([1.0, 1.0, 0.0, 0.0], np.float32), (3, 4, 1))   # [3, 4, 4]
  masks = np.zeros((3, 8, 8), np.float32)
  masks[0, :, :4] = 1
  masks[1, :, :2] = 1
  masks[2, :, :4] = 1
  out = jax.jit(attention.map_jaccard_arrays)({"pool3": heat}, masks, np.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(out["jaccard_pool3"], [1.0, 0.5, 1.0])
  np.testing.assert_array_equal(out["intersection_pool3"], [32, 16, 32])
  np.testing.assert_array_equal(out["union_pool3"], [32, 32, 32])
  np.testing.assert_array_equal(out["has_lesion_mask"], [1, 1, 0])


def test_jaccard_report_mean_and_pooled_over_masked_examples():
  arrays = {
      "has_lesion_mask": np.array([1.0, 1.0, 0.0]),
      "jaccard_pool4": np.array([1.0, 0.25, 0.0]),
      "intersection_pool4": np.array([10.0, 10.0, 0.0]),
      "union_pool4": np.array([10.0, 40.0, 50.0]),
  }
  report = attention.jaccard_report(arrays)
  assert report["jaccard/num_examples"] == 2
  assert report["jaccard/pool4"] == pytest.approx(0.625)           # mean of 1 and 0.25
  assert report["jaccard_pooled/pool4"] == pytest.approx(20 / 50)  # third row left out
  none = attention.jaccard_report({**arrays, "has_lesion_mask": np.zeros(3)})
  assert none["jaccard/num_examples"] == 0 and np.isnan(none["jaccard/pool4"])


def test_upsample_matches_half_pixel_bilinear():
  heat = jnp.array([[[0.0, 1.0]]])                     # [1, 1, 2]
  up = attention.upsample(heat, (1, 4))
  np.testing.assert_allclose(np.asarray(up)[0, 0], [0.0, 0.25, 0.75, 1.0])
