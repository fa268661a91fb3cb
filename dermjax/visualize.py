"""Host-side drawing for explanations: heat-map overlays, numbered gaze points, PNG strips.

All functions take and return numpy uint8 RGB images [H, W, 3]; nothing here is jitted.
"""

import numpy as np
from PIL import Image, ImageDraw

from dermjax import fileio


def resize_map(heat, size):
  """Bilinearly resize a 2-D map [h, w] (any float) to `size` = (H, W); returns float32 [H, W]."""
  img = Image.fromarray(np.asarray(heat, np.float32), mode="F")
  return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), np.float32)


def normalize_map(heat):
  """Min-max normalise a map to [0, 1] (a constant map gives zeros)."""
  heat = np.asarray(heat, np.float32)
  lo, hi = float(heat.min()), float(heat.max())
  return (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)


def _jet(x):
  """[H, W] in [0, 1] -> uint8 [H, W, 3] with a jet-like colour map."""
  r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
  g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
  b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
  return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay_heatmap(image, heat, *, alpha: float = 0.45):
  """Image uint8 [H, W, 3] + map [h, w] -> uint8 [H, W, 3]: the map resized, normalised, blended."""
  image = np.asarray(image, np.uint8)
  heat = normalize_map(resize_map(heat, image.shape[:2]))
  return ((1 - alpha) * image + alpha * _jet(heat)).astype(np.uint8)


def upscale(image, min_side: int = 192):
  """uint8 [H, W, 3] -> the same image bicubically enlarged so its short side is at least
  `min_side` (explanations of small model inputs stay legible); larger images unchanged."""
  image = np.asarray(image, np.uint8)
  h, w = image.shape[:2]
  if min(h, w) >= min_side:
    return image
  scale = min_side / min(h, w)
  size = (round(w * scale), round(h * scale))
  return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def overlay_mask(image, mask, *, color=(255, 0, 0), alpha: float = 0.5):
  """Blend a [h, w] mask in [0, 1] (resized to the image if needed) over uint8 [H, W, 3]."""
  image = np.asarray(image, np.float32)
  mask = np.asarray(mask, np.float32)
  if mask.shape != image.shape[:2]:
    mask = resize_map(mask, image.shape[:2]) > 0.5
  m = np.asarray(mask, np.float32)[..., None] * alpha
  return (image * (1 - m) + np.asarray(color, np.float32) * m).astype(np.uint8)


def draw_points(image, points, *, color=(255, 32, 32), radius=None):
  """Draw numbered points (the thesis's Fig. 7) on image uint8 [H, W, 3].

  points: sequence of (y, x) pixel coordinates, drawn in order and labelled 0, 1, ...
  Consecutive points are joined by a line so the order of the gazes reads at a glance.
  """
  img = Image.fromarray(np.asarray(image, np.uint8))
  draw = ImageDraw.Draw(img)
  radius = radius or max(3, min(img.size) // 40)
  pts = [(float(x), float(y)) for y, x in points]
  if len(pts) > 1:
    draw.line(pts, fill=(255, 255, 0), width=max(1, radius // 3))
  for i, (x, y) in enumerate(pts):
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color, outline=(0, 0, 0))
    draw.text((x + radius, y - 2 * radius), str(i), fill=(255, 255, 255))
  return np.asarray(img)


def hstack(images, *, pad: int = 2):
  """Concatenate uint8 [H, W, 3] images (same H) left to right with white gaps."""
  h = max(im.shape[0] for im in images)
  gap = np.full((h, pad, 3), 255, np.uint8)
  parts = []
  for im in images:
    parts += [np.asarray(im, np.uint8), gap]
  return np.concatenate(parts[:-1], axis=1)


def save_png(image, path):
  """Write uint8 [H, W, 3] (or [H, W]) to `path` atomically, creating parent folders."""
  with fileio.atomic_path(path) as tmp:
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")


def draw_label(image, text, *, color=(255, 255, 255)):
  """Write `text` in the top-left corner of image uint8 [H, W, 3] on a dark box (panel titles)."""
  img = Image.fromarray(np.asarray(image, np.uint8))
  draw = ImageDraw.Draw(img)
  left, top, right, bottom = draw.textbbox((2, 1), text)
  draw.rectangle([0, 0, right + 2, bottom + 1], fill=(0, 0, 0))
  draw.text((2, 1), text, fill=color)
  return np.asarray(img)


def draw_box(image, box, *, color=(255, 0, 0), width=None):
  """Outline a box (top, left, bottom, right as fractions of the side, the convention of
  dermjax.models.common.crop) on image uint8 [H, W, 3]."""
  img = Image.fromarray(np.asarray(image, np.uint8))
  h, w = img.height, img.width
  top, left, bottom, right = (float(v) for v in np.asarray(box).reshape(4))
  width = width or max(1, min(h, w) // 96)
  ImageDraw.Draw(img).rectangle([left * w, top * h, right * w - 1, bottom * h - 1], outline=color,
                                width=width)
  return np.asarray(img)
