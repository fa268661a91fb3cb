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


# --- k90 rotation and the integer crop (AttnMel's authors' code, the thesis rows) ----------


def _dihedral(src):
  """{name: array} of the 8 exact square symmetries of src [H, W, ...] (numpy's rot90 / flips)."""
  out = {}
  for k in range(4):
    rot = np.rot90(src, k=k, axes=(0, 1))
    out[f"r{k}"], out[f"r{k}f"] = rot, rot[:, ::-1]
  return out


def test_k90_rotation_is_exact_rot90():
  """A known image (all pixel values distinct) comes out as exactly np.rot90(image, k), every
  k in 0..3 occurring: no interpolation (bilinear weights exactly 0 / 1)."""
  size, batch = 12, 16
  image = (np.arange(size * size * 3) % 251).reshape(size, size, 3).astype(np.uint8)
  masks = (np.arange(size * size).reshape(size, size, 1) % 3 == 0).astype(np.uint8)
  data = {"image": np.stack([image] * batch), "masks": np.stack([masks] * batch)}
  out = _run(data, jax.random.key(5), dict(OFF, rotation="k90"))
  seen = set()
  for b in range(batch):
    hits = [k for k in range(4) if np.array_equal(out["image"][b], np.rot90(image, k).astype(np.float32))]
    assert len(hits) == 1, f"example {b} is not an exact quarter turn"
    np.testing.assert_array_equal(out["masks"][b], np.rot90(masks, hits[0]).astype(np.float32))
    seen.add(hits[0])
  assert seen == {0, 1, 2, 3}


def test_k90_with_flips_gives_the_eight_symmetries_exactly():
  size, batch = 10, 24
  image = (np.arange(size * size * 3) % 241).reshape(size, size, 3).astype(np.uint8)
  data = {"image": np.stack([image] * batch), "masks": np.zeros((batch, size, size, 1), np.uint8)}
  out = _run(data, jax.random.key(11), dict(OFF, rotation="k90", hflip=True, vflip=True))
  cands = {k: v.astype(np.float32) for k, v in _dihedral(image).items()}
  seen = set()
  for b in range(batch):
    names = [k for k, v in cands.items() if np.array_equal(out["image"][b], v)]
    assert names, f"example {b} is not an exact symmetry of the image"
    seen.update(names)
  assert len(seen) >= 6


def test_random_crop_is_an_exact_window_and_eval_the_centre():
  size, crop, batch = 16, 12, 12
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  masks = rng.integers(0, 2, (batch, size, size, 2), dtype=np.uint8)
  data = {"image": image, "masks": masks}
  out = _run(data, jax.random.key(2), dict(OFF, crop_size=crop))
  assert out["image"].shape == (batch, crop, crop, 3) and out["masks"].shape == (batch, crop, crop, 2)
  offsets = set()
  for b in range(batch):
    found = [(y, x) for y in range(size - crop + 1) for x in range(size - crop + 1)
             if np.array_equal(out["image"][b], image[b, y:y + crop, x:x + crop].astype(np.float32))]
    assert len(found) == 1, f"example {b} is not an integer window"
    y, x = found[0]
    np.testing.assert_array_equal(out["masks"][b], masks[b, y:y + crop, x:x + crop])
    offsets.add(found[0])
  assert len(offsets) > 3
  evaluated = _run(data, jax.random.key(2), dict(OFF, crop_size=crop), train=False)
  np.testing.assert_array_equal(evaluated["image"], image[:, 2:14, 2:14].astype(np.float32))
  np.testing.assert_array_equal(evaluated["masks"], masks[:, 2:14, 2:14])


def test_crop_then_k90_is_exact():
  size, crop, batch = 12, 8, 8
  image = (np.arange(size * size * 3) % 239).reshape(size, size, 3).astype(np.uint8)
  data = {"image": np.stack([image] * batch), "masks": np.zeros((batch, size, size, 1), np.uint8)}
  out = _run(data, jax.random.key(4), dict(OFF, rotation="k90", crop_size=crop))
  for b in range(batch):
    ok = any(np.array_equal(out["image"][b], np.rot90(image[y:y + crop, x:x + crop], k).astype(np.float32))
             for y in range(size - crop + 1) for x in range(size - crop + 1) for k in range(4))
    assert ok, f"example {b}"


def test_rotation_modes_and_crop_errors():
  assert augment.rotation_mode({"rotation": True}) == "uniform"
  assert augment.rotation_mode({"rotation": False}) == "none"
  assert augment.rotation_mode({}) == "none"
  batch = _batch(batch=1)
  with pytest.raises(ValueError, match="augment.rotation"):
    _run(batch, jax.random.key(0), dict(OFF, rotation="k45"))
  with pytest.raises(ValueError, match="crop_size"):
    _run(batch, jax.random.key(0), dict(OFF, crop_size=64))


# --- the source copy (data.source_size: MASLL's crop "from the dermoscopic image") ----------


def _blob(size, centre, sigma):
  yy, xx = np.mgrid[:size, :size].astype(np.float64)
  return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma ** 2))


def _centroid(weights):
  yy, xx = np.mgrid[:weights.shape[0], :weights.shape[1]]
  return np.array([(weights * yy).sum(), (weights * xx).sum()]) / weights.sum()


@pytest.mark.parametrize("aug,source", [
    (dict(FULL, zoom=(0.7, 1.0), fill="constant"), 24),     # any angle, zoom: 1.5 x the image
    (dict(OFF, rotation="k90", hflip=True, vflip=True, crop_size=12), 32),  # exact, 2 x
])
def test_a_marked_pixel_lands_in_the_same_place_in_image_and_source(aug, source):
  """One marked spot per example (a small Gaussian, off-centre), drawn in the 16 px image and
  at the same place in the source copy: after the random transform its centroid in the
  source is the image's centroid at the source's scale (y' = k (y + 1/2) - 1/2)."""
  size, batch = 16, 8
  k = source / size
  spots = [(4.0, 10.0), (11.0, 5.0), (5.0, 5.0), (10.0, 11.0)] * 2
  image = np.stack([_blob(size, c, 1.2) for c in spots])
  big = np.stack([_blob(source, (k * (y + 0.5) - 0.5, k * (x + 0.5) - 0.5), 1.2 * k)
                  for y, x in spots])
  data = {"image": np.repeat((image * 250)[..., None], 3, -1).astype(np.uint8),
          "source_image": np.repeat((big * 250)[..., None], 3, -1).astype(np.uint8),
          "masks": np.zeros((batch, size, size, 1), np.uint8)}
  out = _run(data, jax.random.key(3), aug)
  side = aug.get("crop_size") or size
  assert out["source_image"].shape == (batch, side * k, side * k, 3)
  moved = 0
  for b in range(batch):
    at_image = _centroid(out["image"][b, ..., 0])
    at_source = _centroid(out["source_image"][b, ..., 0])
    np.testing.assert_allclose(at_source, k * (at_image + 0.5) - 0.5, atol=0.15 * k)
    moved += not np.allclose(at_image, spots[b], atol=0.5)
  assert moved >= 3, "the transforms should move the spots"


def test_source_of_the_image_size_is_the_image_exactly():
  """source_size == image_size: the source comes out equal to the image, in training (any
  transform) and at evaluation (the central crop)."""
  batch = _batch(batch=4, size=16)
  batch["source_image"] = batch["image"].copy()
  for aug, train in ((FULL, True), (dict(OFF, rotation="k90", crop_size=12), True),
                     (dict(OFF, crop_size=12), False)):
    out = _run(batch, jax.random.key(5), aug, train=train, mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0))
    # Equal up to f32 rounding: the two paths may fuse (and round) their sampling coordinates
    # differently, ~1e-6 x a neighbour difference of up to 127.5 here; a grey level is 0.5.
    np.testing.assert_allclose(out["source_image"], out["image"], atol=1e-3)


def test_evaluation_centre_crop_of_a_double_size_source():
  size, crop = 16, 12
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  data = {"image": image, "masks": np.zeros((2, size, size, 1), np.uint8),
          "source_image": image.repeat(2, 1).repeat(2, 2)}
  out = _run(data, jax.random.key(0), dict(OFF, crop_size=crop), train=False)
  np.testing.assert_array_equal(out["source_image"],
                                out["image"].repeat(2, 1).repeat(2, 2))
  with pytest.raises(ValueError, match="source_size"):
    _run({**data, "source_image": image.repeat(2, 1).repeat(2, 2)[:, :18, :18]},  # 13.5 px
         jax.random.key(0), dict(OFF, crop_size=crop), train=False)


def test_rescaled_maps_send_pixel_centres_to_pixel_centres():
  matrix = np.asarray(augment.random_affine(jax.random.key(1), FULL, 16, 16))
  big = np.asarray(augment.rescale(jnp.asarray(matrix), 2.5))
  for y, x in ((0.0, 0.0), (3.0, 7.0), (15.0, 2.0)):
    here = matrix @ np.array([y, x, 1.0])
    there = big @ np.array([2.5 * (y + 0.5) - 0.5, 2.5 * (x + 0.5) - 0.5, 1.0])
    np.testing.assert_allclose(there[:2], 2.5 * (here[:2] + 0.5) - 0.5, atol=1e-4)
