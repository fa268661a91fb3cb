"""On-device preprocessing: image and masks move together, masks stay binary, eval is a no-op."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax.data import augment

FULL = dict(rotation=True, max_rotation_deg="any", hflip=True, vflip=True, zoom=(0.7, 1.0))
OFF = dict(rotation=False, hflip=False, vflip=False, zoom=None)


def _blobs(rng, batch, size, channels):
  """Random 0/1 masks made of a few filled discs (so transforms move real structure)."""
  yy, xx = np.mgrid[:size, :size]
  masks = np.zeros((batch, size, size, channels), np.uint8)
  for b in range(batch):
    for c in range(channels):
      for _ in range(2):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, size / 3)
        masks[b, ..., c] |= ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
  return masks


def _batch(seed=0, batch=4, size=32, channels=6):
  rng = np.random.default_rng(seed)
  masks = _blobs(rng, batch, size, channels)
  image = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  image[..., 0] = masks[..., 0] * 255   # Channels 0/1 are copies of masks 0/3.
  image[..., 1] = masks[..., 3] * 255
  return {"image": image, "masks": masks, "label": np.arange(batch, dtype=np.int32)}


@functools.lru_cache(maxsize=None)
def _step(aug_items, train, mean, std):
  """One jitted device_preprocess per setting (compiled once, reused across tests)."""
  return jax.jit(lambda b, k: augment.device_preprocess(
      b, k, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
      aug_config=dict(aug_items), train=train))


def _run(batch, key, aug, train=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
  fn = _step(tuple(sorted(aug.items())), train, tuple(mean), tuple(std))
  return jax.tree.map(np.asarray, fn(batch, key))


def test_image_and_masks_get_the_same_transform():
  batch = _batch()
  out = _run(batch, jax.random.key(3), FULL)
  masks = out["masks"]
  assert masks.dtype == np.float32 and set(np.unique(masks)) <= {0.0, 1.0}
  # The image channels that copy masks 0 and 3 still equal them after the transform.
  np.testing.assert_array_equal(out["image"][..., 0] / 255 > 0.5, masks[..., 0] > 0.5)
  np.testing.assert_array_equal(out["image"][..., 1] / 255 > 0.5, masks[..., 3] > 0.5)
  # ... and the transform did move things, differently per example.
  assert not np.array_equal(masks, batch["masks"].astype(np.float32))
  assert (out["label"] == batch["label"]).all()


def test_deterministic_given_rng():
  batch = _batch()
  a = _run(batch, jax.random.key(7), FULL)
  b = _run(batch, jax.random.key(7), FULL)
  c = _run(batch, jax.random.key(8), FULL)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["masks"], b["masks"])
  assert not np.array_equal(a["image"], c["image"])


def test_eval_is_only_normalisation():
  batch = _batch()
  mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
  for aug, train in ((FULL, False), (OFF, True)):
    out = _run(batch, jax.random.key(0), aug, train=train, mean=mean, std=std)
    expected = (batch["image"].astype(np.float32) - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(out["image"], expected, rtol=1e-6)
    np.testing.assert_array_equal(out["masks"], batch["masks"].astype(np.float32))


def test_flips_only_give_exact_flips():
  batch = _batch(batch=8)
  out = _run(batch, jax.random.key(1), dict(OFF, hflip=True, vflip=True))
  seen = set()
  for b in range(8):
    src = batch["image"][b].astype(np.float32)
    for name, cand in (("id", src), ("h", src[:, ::-1]), ("v", src[::-1]), ("hv", src[::-1, ::-1])):
      if np.array_equal(out["image"][b], cand):
        seen.add(name)
        break
    else:
      raise AssertionError(f"example {b} is not an exact flip of its input")
  assert len(seen) >= 2


def _rotation_matrix(angle, size):
  c = (size - 1) / 2
  cos, sin = math.cos(angle), math.sin(angle)
  lin = np.array([[cos, -sin], [sin, cos]])
  off = np.array([c, c]) - lin @ np.array([c, c])
  return jnp.asarray(np.block([[lin, off[:, None]], [np.zeros((1, 2)), np.ones((1, 1))]]),
                     jnp.float32)


def test_warp_quarter_turn_is_rot90():
  stack = jnp.asarray(np.random.default_rng(0).normal(size=(9, 9, 2)), jnp.float32)
  out = np.asarray(augment.warp(stack, _rotation_matrix(math.pi / 2, 9)))
  # Output (y, x) reads input (c - (x - c), y) = (8 - x, y): numpy's rot90 clockwise.
  np.testing.assert_allclose(out, np.rot90(np.asarray(stack), k=-1, axes=(0, 1)), atol=1e-5)


def test_fill_modes():
  ones = jnp.ones((16, 16, 1), jnp.float32)
  turn = _rotation_matrix(math.pi / 4, 16)
  reflected = np.asarray(augment.warp(ones, turn, fill="reflect"))
  constant = np.asarray(augment.warp(ones, turn, fill="constant"))
  np.testing.assert_allclose(reflected, 1.0, atol=1e-6)
  assert constant[0, 0, 0] == 0.0 and constant[8, 8, 0] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="fill"):
    augment.warp(ones, turn, fill="wrap")


def test_zoom_stays_inside_the_image():
  batch = {"image": np.full((8, 24, 24, 3), 200, np.uint8), "masks": np.ones((8, 24, 24, 1), np.uint8)}
  aug = dict(OFF, zoom=(0.5, 0.9), fill="constant")
  out = _run(batch, jax.random.key(2), aug)
  np.testing.assert_allclose(out["image"], 200.0, rtol=1e-5)   # No constant fill reached.
  assert (out["masks"] == 1).all()


def test_centred_zoom_maps_the_centre_to_itself():
  """zoom_centred: input = centre + s (output - centre) for every draw (no shift, no rotation)."""
  aug = dict(OFF, zoom=(0.8, 1.0), zoom_centred=True)
  centre = np.array([(24 - 1) / 2, (32 - 1) / 2])
  for seed in range(4):
    matrix = np.asarray(augment.random_affine(jax.random.key(seed), aug, 24, 32))
    scale = matrix[0, 0]
    assert 0.8 <= scale <= 1.0
    np.testing.assert_allclose(matrix[:2, :2], scale * np.eye(2), atol=1e-6)
    np.testing.assert_allclose(matrix[:2, 2], centre - scale * centre, atol=1e-4)
  shifted = np.asarray(augment.random_affine(jax.random.key(0), dict(aug, zoom_centred=False), 24, 32))
  assert not np.allclose(shifted[:2, 2], centre - shifted[0, 0] * centre, atol=1e-3)


def test_bad_config_is_rejected():
  batch = _batch(batch=1)
  with pytest.raises(ValueError, match="max_rotation_deg"):
    _run(batch, jax.random.key(0), dict(FULL, max_rotation_deg="lots"))
  with pytest.raises(ValueError, match="zoom"):
    _run(batch, jax.random.key(0), dict(FULL, zoom=(0.9, 0.5)))
