"""On-device "crop the box of a map and resample it to S x S", batched with static shapes.

MASLL (the box of the global activation map) and CIN (the box of the predicted lesion
area) crop every image of a batch by its own box inside the jitted step: boxes are arrays,
so different boxes never recompile, and nothing goes back to the host.

Boxes are [B, 4] float32 (top, left, bottom, right) as fractions of the image side, with
top < bottom and left < right: the rectangle [top * H, bottom * H) x [left * W, right * W)
in pixel-edge coordinates, so (0, 0, 1, 1) is the whole image whatever its size.
"""

import jax
import jax.numpy as jnp

WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


def mask_box(mask, *, min_size: float = 0.0):
  """The smallest rectangle holding the True pixels of each mask: [B, h, w] bool -> [B, 4].

  An empty mask gives the whole image. `min_size` (a fraction of the side) grows smaller
  boxes about their centre, shifted back inside the image.
  """
  mask = jnp.asarray(mask, bool)
  _, h, w = mask.shape
  rows, cols = jnp.any(mask, axis=2), jnp.any(mask, axis=1)            # [B, h], [B, w]

  def extent(hits, n):
    idx = jnp.arange(n)
    first = jnp.min(jnp.where(hits, idx, n), axis=1)
    last = jnp.max(jnp.where(hits, idx, -1), axis=1)
    empty = first >= n
    lo = jnp.where(empty, 0, first) / n
    hi = jnp.where(empty, n, last + 1) / n
    return lo, hi

  top, bottom = extent(rows, h)
  left, right = extent(cols, w)
  top, bottom = _at_least(top, bottom, min_size)
  left, right = _at_least(left, right, min_size)
  return jnp.stack([top, left, bottom, right], axis=-1).astype(jnp.float32)


def _at_least(lo, hi, size):
  """Grows [lo, hi) to length >= size about its centre, kept within [0, 1]."""
  size = min(max(float(size), 0.0), 1.0)
  grow = jnp.maximum(size - (hi - lo), 0.0) / 2
  lo, hi = lo - grow, hi + grow
  shift = jnp.maximum(-lo, 0.0) - jnp.maximum(hi - 1.0, 0.0)
  return jnp.clip(lo + shift, 0.0, 1.0), jnp.clip(hi + shift, 0.0, 1.0)


REGIONS = ("all", "largest")


def largest_region(mask):
  """The largest 4-connected region of each mask: [B, h, w] bool -> [B, h, w] bool (ties: the
  region whose first cell comes first in raster order, scipy.ndimage.label's numbering; an
  empty mask stays empty). Labels propagate on device, one compilation for any mask: each
  cell takes the smallest flat index of its region, h * w rounds of 4-neighbour minima."""
  mask = jnp.asarray(mask, bool)
  b, h, w = mask.shape
  none = h * w
  labels = jnp.where(mask, jnp.arange(none).reshape(1, h, w), none)

  def spread(_, labels):
    padded = jnp.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=none)
    neighbours = jnp.minimum(jnp.minimum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]),
                             jnp.minimum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]))
    return jnp.where(mask, jnp.minimum(labels, neighbours), none)

  labels = jax.lax.fori_loop(0, none, spread, labels)
  sizes = jnp.sum(labels.reshape(b, none, 1) == jnp.arange(none), axis=1)      # [B, h * w]
  return mask & (labels == jnp.argmax(sizes, axis=1)[:, None, None])


def map_box(maps, *, min_size: float = 0.0, region: str = "all"):
  """MASLL eqs. 1-2 box: maps [B, h, w] -> [B, 4], the rectangle of the map >= its mean
  (`region` "all": of every such cell; "largest": of their largest 4-connected region).

  A constant map holds every position (the whole image); NaN-free for any finite map.
  """
  if region not in REGIONS:
    raise ValueError(f"box region must be one of {REGIONS}, got {region!r}")
  maps = jnp.asarray(maps, jnp.float32)
  above = maps >= jnp.mean(maps, axis=(1, 2), keepdims=True)
  return mask_box(largest_region(above) if region == "largest" else above, min_size=min_size)


def crop_and_resize(images, boxes, size: int, *, method: str = "linear",
                    antialias: bool = True):
  """Bilinear crop of each image's box, resampled to size x size.

  images [B, H, W, C] float; boxes [B, 4] (see module docstring) -> [B, size, size, C] in
  the images' dtype. No gradient flows into the boxes (they are a hard choice, as the
  papers' cropping); gradients do flow into the images. `antialias` low-pass filters when
  the box shrinks (as PIL's resize does).
  """
  boxes = jax.lax.stop_gradient(jnp.asarray(boxes, jnp.float32))
  _, height, width, _ = images.shape
  top, left, bottom, right = (boxes[:, i] for i in range(4))
  # Guard against zero-area boxes: at least one input pixel a side.
  box_h = jnp.maximum((bottom - top) * height, 1.0)
  box_w = jnp.maximum((right - left) * width, 1.0)
  scale = jnp.stack([size / box_h, size / box_w], axis=-1)                     # [B, 2]
  translation = -jnp.stack([top * height, left * width], axis=-1) * scale     # [B, 2]

  def one(image, scale, translation):
    out = jax.image.scale_and_translate(
        image.astype(jnp.float32), (size, size, image.shape[-1]), (0, 1), scale, translation,
        method=method, antialias=antialias)
    return out.astype(images.dtype)

  return jax.vmap(one)(images, scale, translation)


def uncrop(maps, boxes, shape):
  """The inverse placement of crop_and_resize for maps: maps [B, h, w] over each box (a crop
  of the image) -> [B, H, W] over the whole image (shape = (H, W)), bilinear inside the
  box and 0 outside it (e.g. CIN's attention over its lesion crop, for faithfulness)."""
  maps = jnp.asarray(maps, jnp.float32)
  boxes = jnp.asarray(boxes, jnp.float32)
  _, h, w = maps.shape
  height, width = shape
  top, left, bottom, right = (boxes[:, i] for i in range(4))
  scale = jnp.stack([(bottom - top) * height / h, (right - left) * width / w], -1)
  translation = jnp.stack([top * height, left * width], -1)

  def one(m, scale, translation):
    return jax.image.scale_and_translate(m, (height, width), (0, 1), scale, translation,
                                         method="linear", antialias=False)

  return jax.vmap(one)(maps, scale, translation)
