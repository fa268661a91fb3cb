"""Device-side preprocessing: uint8 host batch -> normalised (and augmented) model batch.

Pure jnp functions, meant to run inside the jitted train/eval step (they work under jit,
vmap and on a batch sharded along its leading axis). Image and masks go through one
gather per example, so the random geometric transform is identical for both:

  random affine (rotation, h/v flips, random crop/zoom) in output->input pixel coordinates
  -> bilinear resampling of the stacked [H, W, 3 + M] image+masks
  -> masks thresholded at 0.5 (binary again), image normalised (config.data.normalization).
An optional source_image (the same crop at a higher resolution, config.data.source_size)
gets the same transform at its own scale (`rescale`), so a pixel lands at the same place.

aug_config fields (config.data.augment; missing ones are off):
  rotation   "uniform" (angle uniform in +-max_rotation_deg) | "k90" (k x 90 degrees, k
             uniform in 0..3; square images) | "none" (True / False: "uniform" / "none")
  hflip, vflip  random flips with probability 1/2
  zoom       (min, max) random crop side as a fraction of the image (resampled back), or None
  fill       "reflect" | "constant" outside the input
  crop_size  None, or a model input side C < H: training reads a random C x C window at
             integer offsets (the random crop of the authors' AttnMel code), evaluation
             the central one (their centre crop); [B, H, W] in -> [B, C, C] out.

Pixel centres sit at integer coordinates and k90 / flip / integer-crop matrices have
integer entries, so without zoom these transforms are exact (no interpolation).
"""

import math

import jax
import jax.numpy as jnp

FILL_MODES = ("reflect", "constant")
ROTATIONS = ("none", "uniform", "k90")


def rotation_mode(aug_config) -> str:
  """config.data.augment.rotation as one of ROTATIONS (booleans: True "uniform", False "none")."""
  mode = aug_config.get("rotation", "none")
  if isinstance(mode, bool) or mode is None:
    mode = "uniform" if mode else "none"
  if mode not in ROTATIONS:
    raise ValueError(f"augment.rotation must be one of {ROTATIONS}, got {mode!r}")
  return mode


def _max_rotation_rad(aug_config):
  """Rotation range in radians from `rotation` / `max_rotation_deg` (a number or "any")."""
  if rotation_mode(aug_config) != "uniform":
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


def _crop_size(aug_config, height, width):
  """The output side of augment.crop_size, or None; checks it fits the input."""
  size = aug_config.get("crop_size", None)
  if size is None:
    return None
  size = int(size)
  if not 0 < size <= min(height, width):
    raise ValueError(f"augment.crop_size = {size} must be in (0, {min(height, width)}] "
                     f"for {height} x {width} inputs")
  return size


def random_affine(rng, aug_config, height, width, out_height=None, out_width=None):
  """One random output->input pixel map: 3x3 float32 matrix on homogeneous (y, x, 1).

  input = c_in + T + s * R(angle) @ F @ (output - c_out), with c_in, c_out the centres of the
  H x W input and the (out_height x out_width, default H x W) output, F the flips, s in the
  zoom range (crop side as a fraction of the output side) and T a random shift keeping the
  un-rotated window inside the input (integer when there is no zoom: an exact crop; T = 0 with `zoom_centred`: the window about
  the centre).
  """
  out_height = height if out_height is None else out_height
  out_width = width if out_width is None else out_width
  k_angle, k_hflip, k_vflip, k_scale, k_shift = jax.random.split(rng, 5)
  mode = rotation_mode(aug_config)
  if mode == "k90":
    if out_height != out_width:
      raise ValueError(f"augment.rotation = 'k90' needs square images, got {out_height} x {out_width}")
    k = jax.random.randint(k_angle, (), 0, 4)
    cos = jnp.array([1.0, 0.0, -1.0, 0.0], jnp.float32)[k]   # exact: no cos(pi / 2) ~ 4e-8.
    sin = jnp.array([0.0, 1.0, 0.0, -1.0], jnp.float32)[k]
  else:
    max_rot = _max_rotation_rad(aug_config)
    angle = jax.random.uniform(k_angle, (), minval=-max_rot, maxval=max_rot) if max_rot else 0.0
    cos, sin = jnp.cos(angle), jnp.sin(angle)
  fy = fx = jnp.float32(1.0)
  if aug_config.get("vflip", False):
    fy = jnp.where(jax.random.bernoulli(k_vflip), -1.0, 1.0)
  if aug_config.get("hflip", False):
    fx = jnp.where(jax.random.bernoulli(k_hflip), -1.0, 1.0)
  zoom = _zoom_range(aug_config)
  spare = jnp.array([height - out_height, width - out_width], jnp.float32)
  if zoom is None:
    scale = jnp.float32(1.0)
    # Integer window offsets in [0, spare], as a shift from the centred window.
    window = jnp.floor(jax.random.uniform(k_shift, (2,)) * (spare + 1.0))
    shift = jnp.minimum(window, spare) - spare / 2
  else:
    scale = jax.random.uniform(k_scale, (), minval=zoom[0], maxval=zoom[1])
    extent = jnp.array([out_height - 1, out_width - 1], jnp.float32)
    room = jnp.maximum(spare + (1.0 - scale) * extent, 0.0) / 2
    shift = jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0) * room
    if aug_config.get("zoom_centred", False):
      shift = jnp.zeros((2,), jnp.float32)
  # Elementwise products and sums, no matmul: exact on every backend (TPU matmuls run in bf16).
  rotation = jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])]).astype(jnp.float32)
  linear = scale * rotation * jnp.stack([fy, fx]).astype(jnp.float32)[None, :]   # R @ diag(F)
  centre_in = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  centre_out = ((out_height - 1) / 2, (out_width - 1) / 2)
  offset = centre_in + shift - (linear[:, 0] * centre_out[0] + linear[:, 1] * centre_out[1])
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


def warp(stack, matrix, *, fill="reflect", out_shape=None):
  """Bilinear resampling of one example. stack [H, W, C] float, matrix [3, 3] -> [h, w, C]
  with (h, w) = out_shape (default (H, W)).

  Output pixel (y, x) reads the input at matrix @ (y, x, 1); `fill` says what lies outside
  the input: "reflect" (mirror image) or "constant" (zeros).
  """
  if fill not in FILL_MODES:
    raise ValueError(f"augment.fill must be one of {FILL_MODES}, got {fill!r}")
  height, width = stack.shape[:2]
  out_h, out_w = (height, width) if out_shape is None else out_shape
  ys, xs = jnp.meshgrid(jnp.arange(out_h, dtype=jnp.float32),
                        jnp.arange(out_w, dtype=jnp.float32), indexing="ij")
  src_y = matrix[0, 0] * ys + matrix[0, 1] * xs + matrix[0, 2]
  src_x = matrix[1, 0] * ys + matrix[1, 1] * xs + matrix[1, 2]
  y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
  wy, wx = src_y - y0, src_x - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  out = jnp.zeros((out_h, out_w) + stack.shape[2:], stack.dtype)
  for dy, weight_y in ((0, 1.0 - wy), (1, wy)):
    iy, in_y = _source_index(y0 + dy, height, fill)
    for dx, weight_x in ((0, 1.0 - wx), (1, wx)):
      ix, in_x = _source_index(x0 + dx, width, fill)
      weight = weight_y * weight_x * in_y * in_x
      out = out + weight[..., None] * stack[iy, ix]
  return out


def rescale(matrices, scale: float):
  """Output->input maps [..., 3, 3] between the pixel grids of an image -> the same maps
  between the grids of that image at `scale` times the resolution (a source copy).

  With pixel centres at integer coordinates, y there = scale * (y + 1/2) - 1/2 here; the
  linear part stays, the offset becomes scale * offset + (scale - 1) / 2 * (1 - row sums).
  Elementwise only (exact on every backend, as random_affine).
  """
  linear, offset = matrices[..., :2, :2], matrices[..., :2, 2]
  offset = scale * offset + (scale - 1.0) / 2 * (1.0 - linear[..., 0] - linear[..., 1])
  top = jnp.concatenate([linear, offset[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0], matrices.dtype), top.shape[:-2] + (1, 3))
  return jnp.concatenate([top, bottom], axis=-2)


def _source_side(side, height, source):
  """The side at a source's scale (source / height) of `side` image pixels; must be whole."""
  if (side * source) % height:
    raise ValueError(f"a {source} px source_image of {height} px images has no whole-pixel "
                     f"counterpart of a {side} px output: choose data.source_size so that "
                     f"{side} * source_size / {height} is an integer")
  return side * source // height


def _warp_source(source, matrices, height, out_shape, fill):
  """source [B, R, R, C] under image-scale maps [B, 3, 3] (images H px) -> [B, r, r, C]."""
  scale = source.shape[1] / height
  out = tuple(_source_side(side, height, source.shape[1]) for side in out_shape)
  return jax.vmap(lambda s, m: warp(s, m, fill=fill, out_shape=out))(
      source, rescale(matrices, scale))


def augment(image, masks, rng, aug_config, source=None):
  """Random geometric transform, identical for image, masks and source, independent per
  example.

  image [B, H, W, 3] float, masks [B, H, W, M] float 0/1 -> [B, h, w, 3], [B, h, w, M] with
  h = w = augment.crop_size if set, else (H, W); masks stay 0/1. source (optional) [B, R, R, C]
  float: the same images at R / H times the resolution, transformed by the same maps at its
  own scale -> [B, h R / H, w R / H, C] (None stays None). Returns (image, masks, source).
  """
  batch, height, width = image.shape[:3]
  crop = _crop_size(aug_config, height, width)
  out_h, out_w = (height, width) if crop is None else (crop, crop)
  fill = aug_config.get("fill", "reflect")
  matrices = jax.vmap(lambda key: random_affine(key, aug_config, height, width, out_h, out_w))(
      jax.random.split(rng, batch))
  stack = jnp.concatenate([image, masks.astype(image.dtype)], axis=-1)
  stack = jax.vmap(lambda s, m: warp(s, m, fill=fill, out_shape=(out_h, out_w)))(stack, matrices)
  image, masks = stack[..., :image.shape[-1]], stack[..., image.shape[-1]:]
  if source is not None:
    source = _warp_source(source, matrices, height, (out_h, out_w), fill)
  return image, (masks > 0.5).astype(jnp.float32), source


def _centre_offsets(height, width, size):
  """(top, left) of the central size x size window, rounded as torchvision's center_crop."""
  return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def center_crop(x, size):
  """The central size x size window of [B, H, W, ...] (numpy or jax), offsets rounded as
  torchvision's center_crop; size None -> x unchanged."""
  if size is None:
    return x
  top, left = _centre_offsets(*x.shape[1:3], size)
  return x[:, top:top + size, left:left + size]


def _center_crop_source(source, height, width, size):
  """The window of center_crop(images, size) in a source copy of the H x W images."""
  if size is None:
    return source
  top, left = _centre_offsets(height, width, size)
  window = jnp.array([[1.0, 0.0, top], [0.0, 1.0, left], [0.0, 0.0, 1.0]], jnp.float32)
  matrices = jnp.broadcast_to(window, (source.shape[0], 3, 3))
  return _warp_source(source, matrices, height, (size, size), "reflect")


def device_preprocess(batch, rng, *, mean, std, aug_config, train: bool):
  """Host batch (schema.py: image uint8 [B, H, W, 3], masks uint8 [B, H, W, 1+A]) -> model batch.

  image becomes float32 (image - mean) / std (mean, std: [3] in 0-255 units), masks float32
  0/1; with train=True (and an aug_config) both first get the same random transform per
  example. aug_config: config.data.augment (ConfigDict or dict; missing fields are off).
  With augment.crop_size C, evaluation (train=False) takes the central C x C window and
  training a random one (see augment). An optional evidence_mask uint8 [B, H, W] becomes
  float32 0/1 transformed like the masks; an optional source_image uint8 [B, R, R, 3] (the
  same crop at R px, data.source_size) is transformed by the same maps at its own scale and
  normalised like the image. Other entries pass through unchanged. rng is unused when
  train=False.
  """
  image = batch["image"].astype(jnp.float32)
  masks = batch["masks"].astype(jnp.float32)
  source = batch.get("source_image")
  source = None if source is None else source.astype(jnp.float32)
  channels = masks.shape[-1]
  if "evidence_mask" in batch:  # optional: transformed with the masks, as one more channel
    masks = jnp.concatenate([masks, batch["evidence_mask"][..., None].astype(jnp.float32)], -1)
  if train and aug_config is not None:
    image, masks, source = augment(image, masks, rng, aug_config, source)
  elif aug_config is not None:
    crop = _crop_size(aug_config, *image.shape[1:3])
    if source is not None:
      source = _center_crop_source(source, *image.shape[1:3], crop)
    image, masks = center_crop(image, crop), center_crop(masks, crop)
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  out = dict(batch)
  out["image"] = (image - mean) / std
  if source is not None:
    out["source_image"] = (source - mean) / std
  out["masks"] = masks[..., :channels]
  if "evidence_mask" in batch:
    out["evidence_mask"] = masks[..., channels]
  return out
