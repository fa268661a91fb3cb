"""dermjax.models.common.crop: map/mask boxes against brute force, crop-and-resize against PIL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dermjax.models.common import crop


def brute_force_box(mask):
  """(top, left, bottom, right) fractions of the smallest rectangle holding `mask`."""
  h, w = mask.shape
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    return np.array([0, 0, 1, 1], np.float32)
  return np.array([ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w], np.float32)


def test_map_box_matches_brute_force_including_ties_and_constant_maps():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(16, 9, 13)).astype(np.float32)
  maps[3] = 2.5                                    # constant map: every position >= mean.
  maps[4] = np.round(maps[4])                      # many ties.
  maps[5] = 0.0
  maps[5, 4, 6] = 1.0                              # one hot pixel: a one-pixel box.
  got = np.asarray(jax.jit(crop.map_box)(maps))
  want = np.stack([brute_force_box(m >= m.mean()) for m in maps])
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(got[3], crop.WHOLE_IMAGE)
  assert np.all(np.isfinite(got)) and np.all(got[:, 2] > got[:, 0]) and np.all(got[:, 3] > got[:, 1])


def largest_region_scipy(mask):
  """The largest 4-connected region of a [h, w] mask by scipy.ndimage.label (first on ties)."""
  labels, count = ndimage.label(mask)
  if count == 0:
    return np.zeros_like(mask, bool)
  return labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])


def test_largest_region_matches_scipy_and_compiles_once():
  rng = np.random.default_rng(0)
  traces = []

  @jax.jit
  def largest(masks):
    traces.append(1)
    return crop.largest_region(masks)

  for trial in range(4):
    masks = rng.random((64, 7, 9)) < rng.uniform(0.2, 0.8, (64, 1, 1))
    masks[0] = False                                # empty: stays empty
    masks[1] = np.eye(7, 9, dtype=bool)             # diagonal cells are not 4-connected
    got = np.asarray(largest(masks))
    np.testing.assert_array_equal(got, [largest_region_scipy(m) for m in masks], f"trial {trial}")
  assert len(traces) == 1
  maps = rng.normal(size=(8, 7, 9)).astype(np.float32)
  np.testing.assert_allclose(crop.map_box(maps, region="largest"),
                             [brute_force_box(largest_region_scipy(m >= m.mean())) for m in maps])


def test_mask_box_empty_is_whole_image_and_min_size_stays_inside():
  mask = np.zeros((2, 8, 8), bool)
  mask[1, 0, 7] = True                             # a corner pixel.
  got = np.asarray(crop.mask_box(mask, min_size=0.5))
  np.testing.assert_allclose(got[0], crop.WHOLE_IMAGE)
  np.testing.assert_allclose(got[1], [0.0, 0.5, 0.5, 1.0])


@pytest.mark.parametrize("size", [16, 48])
def test_crop_and_resize_matches_pil(size):
  """Up- and down-sampling boxes against PIL's bilinear resize of the same box."""
  rng = np.random.default_rng(1)
  images = rng.uniform(0, 255, (3, 40, 60, 1)).astype(np.float32)
  boxes = np.array([[0.1, 0.2, 0.6, 0.7], [0, 0, 1, 1], [0.25, 0.5, 0.5, 0.75]], np.float32)
  got = np.asarray(crop.crop_and_resize(jnp.asarray(images), boxes, size))
  for b, (top, left, bottom, right) in enumerate(boxes):
    ref = np.asarray(Image.fromarray(images[b, ..., 0]).resize(
        (size, size), Image.BILINEAR, box=(left * 60, top * 40, right * 60, bottom * 40)))
    np.testing.assert_allclose(got[b, ..., 0], ref, atol=0.05)


def test_crop_compiles_once_and_has_no_box_gradient():
  images = jnp.ones((2, 16, 16, 3))
  traces = []

  @jax.jit
  def f(images, boxes):
    traces.append(1)
    return jnp.sum(crop.crop_and_resize(images, boxes, 8) ** 2)

  for boxes in ([[0, 0, 1, 1], [0.1, 0.1, 0.5, 0.9]], [[0.3, 0.2, 0.4, 0.6], [0, 0, 0.5, 0.5]]):
    f(images, jnp.asarray(boxes, jnp.float32))
  assert len(traces) == 1
  boxes = jnp.asarray([[0.1, 0.1, 0.6, 0.6]] * 2, jnp.float32)
  g_images, g_boxes = jax.grad(lambda i, b: jnp.sum(crop.crop_and_resize(i * 2, b, 8)),
                               argnums=(0, 1))(images, boxes)
  assert float(jnp.abs(g_boxes).sum()) == 0.0 and float(jnp.abs(g_images).sum()) > 0
