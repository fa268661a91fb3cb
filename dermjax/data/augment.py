"""Device-side preprocessing: uint8 host batch -> normalised (and augmented) model batch.

Pure jnp functions, meant to run inside the jitted train/eval step (they work under jit,
vmap and on a batch sharded along its leading axis). Image and masks go through one
gather per example, so the random geometric transform is identical for both:

  random affine (rotation, h/v flips, random crop/zoom) in output->input pixel coordinates
  -> bilinear resampling of the stacked [H, W, 3 + M] image+masks
  -> masks thresholded at 0.5 (binary again), image normalised with the train mean/std.

Pixel centres sit at integer coordinates, so the identity transform (and any flip) is exact.
"""

import math

import jax
import jax.numpy as jnp

FILL_MODES = ("reflect", "constant")


def _max_rotation_rad(aug_config):
  """Rotation range in radians from `rotation` / `max_rotation_deg` (a number or "any")."""
  if not aug_config.get("rotation", False):
    return 0.0
  max_deg = aug_config.get("max_rotation_deg", 180.0)
  if isinstance(max_deg, str):
    if max_deg != "any":
      raise ValueError(f"augment.max_rotation_deg must be a number or 'any', got {max_deg!r}")
    max_deg = 180.0
  return math.radians(float(max_deg))


def _zoom_range(aug_config):
  zoom = aug_config.get("zoom", None)
  if zoom is None:
    return None
  lo, hi = (float(z) for z in zoom)
  if not 0.0 < lo <= hi:
    raise ValueError(f"augment.zoom must be (min, max) crop-side fractions with 0 < min <= max, "
                     f"got {tuple(zoom)!r}")
  return lo, hi


def random_affine(rng, aug_config, height, width):
  """One random output->input pixel map: 3x3 float32 matrix on homogeneous (y, x, 1).

  input = centre + T + s * R(angle) @ F @ (output - centre), with F the flips, s in the zoom
  range (the crop side as a fraction of the image side) and T a random shift keeping the
  un-rotated crop inside the image (T = 0 with `zoom_centred`: the crop about the centre).
  """
  k_angle, k_hflip, k_vflip, k_scale, k_shift = jax.random.split(rng, 5)
  max_rot = _max_rotation_rad(aug_config)
  angle = jax.random.uniform(k_angle, (), minval=-max_rot, maxval=max_rot) if max_rot else 0.0
  fy = fx = jnp.float32(1.0)
  if aug_config.get("vflip", False):
    fy = jnp.where(jax.random.bernoulli(k_vflip), -1.0, 1.0)
  if aug_config.get("hflip", False):
    fx = jnp.where(jax.random.bernoulli(k_hflip), -1.0, 1.0)
  zoom = _zoom_range(aug_config)
  if zoom is None:
    scale, shift = jnp.float32(1.0), jnp.zeros((2,), jnp.float32)
  else:
    scale = jax.random.uniform(k_scale, (), minval=zoom[0], maxval=zoom[1])
    room = jnp.maximum(1.0 - scale, 0.0) / 2 * jnp.array([height - 1, width - 1], jnp.float32)
    shift = jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0) * room
    if aug_config.get("zoom_centred", False):
      shift = jnp.zeros((2,), jnp.float32)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  linear = scale * jnp.array([[cos, -sin], [sin, cos]], jnp.float32) @ jnp.diag(
      jnp.stack([fy, fx]).astype(jnp.float32))
  centre = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  offset = centre + shift - linear @ centre
  return jnp.concatenate(
      [jnp.concatenate([linear, offset[:, None]], axis=1), jnp.array([[0.0, 0.0, 1.0]])], axis=0
  ).astype(jnp.float32)


def _source_index(idx, size, fill):
  """Integer coordinates -> (valid index into [0, size), in-bounds weight)."""
  if fill == "reflect":  # Half-sample symmetric (scipy.ndimage "reflect"): d c b a | a b c d | d c
    period = 2 * size
    m = jnp.mod(idx, period)
    return jnp.where(m >= size, period - 1 - m, m), jnp.ones(idx.shape, jnp.float32)
  inside = (idx >= 0) & (idx < size)
  return jnp.clip(idx, 0, size - 1), inside.astype(jnp.float32)


def warp(stack, matrix, *, fill="reflect"):
  """Bilinear resampling of one example. stack [H, W, C] float, matrix [3, 3] -> [H, W, C].

  Output pixel (y, x) reads the input at matrix @ (y, x, 1); `fill` says what lies outside
  the input: "reflect" (mirror image) or "constant" (zeros).
  """
  if fill not in FILL_MODES:
    raise ValueError(f"augment.fill must be one of {FILL_MODES}, got {fill!r}")
  height, width = stack.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing="ij")
  src_y = matrix[0, 0] * ys + matrix[0, 1] * xs + matrix[0, 2]
  src_x = matrix[1, 0] * ys + matrix[1, 1] * xs + matrix[1, 2]
  y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
  wy, wx = src_y - y0, src_x - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  out = jnp.zeros_like(stack)
  for dy, weight_y in ((0, 1.0 - wy), (1, wy)):
    iy, in_y = _source_index(y0 + dy, height, fill)
    for dx, weight_x in ((0, 1.0 - wx), (1, wx)):
      ix, in_x = _source_index(x0 + dx, width, fill)
      weight = weight_y * weight_x * in_y * in_x
      out = out + weight[..., None] * stack[iy, ix]
  return out


def augment(image, masks, rng, aug_config):
  """Random geometric transform, identical for image and masks, independent per example.

  image [B, H, W, 3] float, masks [B, H, W, M] float 0/1 -> same shapes; masks stay 0/1.
  """
  batch, height, width = image.shape[:3]
  fill = aug_config.get("fill", "reflect")
  matrices = jax.vmap(lambda key: random_affine(key, aug_config, height, width))(
      jax.random.split(rng, batch))
  stack = jnp.concatenate([image, masks.astype(image.dtype)], axis=-1)
  stack = jax.vmap(lambda s, m: warp(s, m, fill=fill))(stack, matrices)
  image, masks = stack[..., :image.shape[-1]], stack[..., image.shape[-1]:]
  return image, (masks > 0.5).astype(jnp.float32)


def device_preprocess(batch, rng, *, mean, std, aug_config, train: bool):
  """Host batch (schema.py: image uint8 [B, H, W, 3], masks uint8 [B, H, W, 1+A]) -> model batch.

  image becomes float32 (image - mean) / std (mean, std: [3] in 0-255 units), masks float32
  0/1; with train=True (and an aug_config) both first get the same random transform per
  example. aug_config: config.data.augment (ConfigDict or dict; missing fields are off).
  Other entries pass through unchanged. rng is unused when train=False.
  """
  image = batch["image"].astype(jnp.float32)
  masks = batch["masks"].astype(jnp.float32)
  if train and aug_config is not None:
    image, masks = augment(image, masks, rng, aug_config)
  out = dict(batch)
  out["image"] = (image - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  out["masks"] = masks
  return out
