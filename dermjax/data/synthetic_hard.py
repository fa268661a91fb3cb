"""The `hard` synthetic preset: the label lives only in local structures at known places.

`draw_hard(rng, height, width, malignant=..., strength=...)` draws one image whose global
appearance does not depend on the label: skin tone, lesion size, shape irregularity and
body colour come from one class-independent distribution. One or two *evidence sites*
(a sector of the lesion border, or a disk in one sector of the lesion body; same
distribution for both classes) carry a dermoscopic structure drawn with the ISIC 2017
superpixel classes:

  site     malignant                                   benign
  border   streaks (thick radial lines) | negative     regular fine pigment network
           network (coarse light mesh, dark holes)
  inner    atypical pigment network (thick, broken,    regular fine pigment network |
           irregular period) | blotch (no ISIC class)  milia-like cysts | globules (2018)

Malignant structures are coarse and irregular, benign ones fine and regular, so at a
downsampled model input a malignant site shows as local contrast and a benign one as
nearly homogeneous. After drawing, every site is shifted so its mean colour equals the
mean colour it had before (plus a class-independent darkening), so the mean colour of
the site, the lesion and the image is independent of the label; `strength` in [0, 1] is
the structures' opacity (0: the label is invisible). Label-independent confounders follow:
colour cast, vignetting, hair, ruler marks, blur and a per-image JPEG quality.

The evidence mask is the union of the sites (inside the lesion): every pixel a structure
changed is in it. Sites are unions of superpixels clipped to the lesion, so the 2017
features JSON / 2018 attribute PNGs decode back to the structures' attribute regions.
"""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dermjax.data import drawing
from dermjax.data import schema

_ATTR = {name: k for k, name in enumerate(schema.ATTRIBUTES)}
STRUCTURES = {  # site -> (malignant choices, benign choices); None = no ISIC class
    "border": (("streaks", "negative_network"), ("pigment_network",)),
    "inner": (("pigment_network", None), ("pigment_network", "milia_like_cyst", "globules")),
}


def _lerp(a, b, t):
  return np.float32(a) + (np.float32(b) - np.float32(a)) * np.float32(t)


def _site_pattern(rng, kind, structure, malignant, yy, xx, cy, cx, theta, r0):
  """Contrast pattern [H, W, 3] (added to the body, any sign) of one structure."""
  side = max(r0, 1.0)
  if kind == "border" and malignant and structure == "streaks":
    count = int(rng.integers(10, 16))  # thick radial spokes, irregular widths
    phase = ((theta + rng.uniform(0, 2 * np.pi)) * count / (2 * np.pi)) % 1
    lines = phase < rng.uniform(.35, .5)
    return np.where(lines[..., None], np.float32((-70, -60, -50)), np.float32((25, 20, 15)))
  if malignant and structure == "negative_network":
    period = side / rng.uniform(2., 2.8)
    u = np.sin(2 * np.pi * xx / period + rng.uniform(0, 6)) + np.sin(2 * np.pi * yy / period)
    return np.where((u > .6)[..., None], np.float32((80, 75, 70)), np.float32((-35, -30, -25)))
  if malignant and structure == "pigment_network":  # atypical: thick, broken, irregular
    period = side / rng.uniform(1.8, 2.6)
    warp = 1.5 * np.sin(yy / side * 4 + rng.uniform(0, 6))
    lines = (((xx + warp) % period) < .45 * period) | (((yy - warp) % period) < .45 * period)
    broken = np.sin(xx / side * 7 + rng.uniform(0, 6)) * np.sin(yy / side * 5) > -.3
    return np.where((lines & broken)[..., None], np.float32((-75, -65, -55)),
                    np.float32((20, 15, 10)))
  if malignant:  # blotch: a dark irregular blob with a blue-grey veil around it
    a = rng.uniform(0, 2 * np.pi)
    blob = np.hypot(yy - cy - .25 * side * np.sin(a), xx - cx - .25 * side * np.cos(a)) < .3 * side
    return np.where(blob[..., None], np.float32((-80, -75, -65)), np.float32((15, 35, 60)))
  if structure == "pigment_network":  # regular, thin, fine
    period = side / rng.uniform(5., 7.)
    lines = ((xx % period) < .25 * period) | ((yy % period) < .25 * period)
    return np.where(lines[..., None], np.float32((-35, -30, -25)), np.float32((8, 7, 6)))
  # milia-like cysts (bright) or globules (brown): small regular dots on a fine lattice
  period = side / rng.uniform(4., 5.5)
  dots = np.hypot((xx % period) - period / 2, (yy % period) - period / 2) < .22 * period
  tone = (50, 50, 45) if structure == "milia_like_cyst" else (-45, -40, -30)
  return np.where(dots[..., None], np.float32(tone), np.float32(0))


def _sites(rng, superpixels, lesion, cy, cx, r0, radius_at):
  """[(kind, bool [H, W] region)]: 1-2 disjoint evidence sites, unions of superpixels
  clipped to the lesion."""
  flat = superpixels.ravel()
  count = np.bincount(flat)
  h, w = lesion.shape
  ys, xs = np.divmod(np.arange(h * w), w)
  sy, sx = np.bincount(flat, weights=ys) / count, np.bincount(flat, weights=xs) / count
  inside = np.bincount(flat, weights=lesion.ravel()) / count
  s_theta = np.arctan2(sy - cy, sx - cx)
  s_rel = np.hypot(sy - cy, sx - cx) / np.maximum(radius_at(s_theta), 1e-6)
  free = np.ones(len(count), bool)
  out = []
  first = rng.uniform(-np.pi, np.pi)
  for k in range(1 + int(rng.random() < .5)):
    kind = ("border", "inner")[int(rng.integers(2))]
    centre = first + k * np.pi + rng.uniform(-.5, .5)  # a second site on the other side
    gap = np.abs(np.angle(np.exp(1j * (s_theta - centre))))
    if kind == "border":
      chosen = (gap < rng.uniform(.5, .8)) & (s_rel > .55) & (inside > .3)
    else:
      py, px = cy + .4 * r0 * np.sin(centre), cx + .4 * r0 * np.cos(centre)
      chosen = (np.hypot(sy - py, sx - px) < rng.uniform(.32, .42) * r0) & (inside > .5)
    chosen &= free
    free &= ~chosen
    out.append((kind, chosen))
  return out


def _confounders(rng, image, side):
  """Label-independent nuisances on float [H, W, 3] -> uint8 [H, W, 3]."""
  height, width = image.shape[:2]
  yy = np.arange(height, dtype=np.float32)[:, None]
  xx = np.arange(width, dtype=np.float32)[None]
  image = image * rng.uniform(.9, 1.1, 3).astype(np.float32)  # colour cast
  if rng.random() < .5:  # vignetting
    r = np.hypot((yy - height / 2) / (height / 2), (xx - width / 2) / (width / 2)) / math.sqrt(2)
    image = image * (1 - np.float32(rng.uniform(.1, .45)) * r[..., None] ** 2)
  pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  scale = side / 300
  for _ in range(int(rng.integers(0, 7))):  # hair: dark gently curved strands
    y, x = rng.uniform(0, height), rng.uniform(0, width)
    a, bend, step = rng.uniform(0, 2 * np.pi), rng.uniform(-.3, .3), side / 10
    points = []
    for _ in range(8):
      points.append((x, y))
      a += bend
      x, y = x + step * math.cos(a), y + step * math.sin(a)
    tone = int(rng.integers(15, 70))
    draw.line(points, fill=(tone, int(.8 * tone), int(.6 * tone)), width=max(1, round(2 * scale)))
  if rng.random() < .3:  # ruler marks along one edge
    edge = int(rng.integers(4))
    tone = (30, 30, 30) if rng.random() < .5 else (235, 235, 230)
    pitch = max(2., side / 30)
    length = max(2., side / 25)
    for t in np.arange(pitch, (width if edge < 2 else height) - 1, pitch):
      tick = length * (2 if round(t / pitch) % 5 == 0 else 1)
      if edge == 0:
        draw.line([(t, 0), (t, tick)], fill=tone)
      elif edge == 1:
        draw.line([(t, height - 1), (t, height - 1 - tick)], fill=tone)
      elif edge == 2:
        draw.line([(0, t), (tick, t)], fill=tone)
      else:
        draw.line([(width - 1, t), (width - 1 - tick, t)], fill=tone)
  if rng.random() < .5:
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(.3, 1.5) * scale))
  return np.asarray(pil)


def draw_hard(rng, height, width, *, malignant: bool, strength: float, with_globules=True,
              return_layers=False):
  """One hard image -> the dict of synthetic.draw_lesion plus evidence_mask uint8 [H, W] 0/1
  and jpeg_quality int; with return_layers also the float images before / after the
  structures ("before_structures", "after_structures", [H, W, 3], ahead of confounders)."""
  yy = np.arange(height, dtype=np.float32)[:, None]
  xx = np.arange(width, dtype=np.float32)[None]
  side = min(height, width)
  skin = _lerp((236, 196, 170), (150, 104, 78), rng.uniform(0, 1)) + rng.uniform(-10, 10, 3)
  image = skin.astype(np.float32) + 10 * drawing.smooth_noise(rng, yy, xx, side)[..., None]
  image += rng.normal(0, 3, (height, width, 1)).astype(np.float32)

  cy = height / 2 + rng.uniform(-.08, .08) * height
  cx = width / 2 + rng.uniform(-.08, .08) * width
  r0 = rng.uniform(.22, .3) * side
  irregular = rng.uniform(0, .12)
  waves = [(k, rng.uniform(0, irregular), rng.uniform(0, 2 * np.pi)) for k in range(2, 7)]
  radius_at = lambda t: r0 * np.maximum(1 + sum(a * np.cos(k * t + p) for k, a, p in waves), .5)
  theta = np.arctan2(yy - cy, xx - cx)
  dist = np.hypot(yy - cy, xx - cx)
  radius = radius_at(theta)
  lesion = dist < radius
  colour = _lerp((150, 100, 72), (85, 55, 40), rng.uniform(0, 1)) + rng.uniform(-8, 8, 3)
  shade = (1 - np.float32(.15) * (1 - dist / radius))[..., None]
  body = colour.astype(np.float32) * shade + 4 * drawing.smooth_noise(rng, yy, xx, r0)[..., None]

  superpixels = drawing.superpixel_grid(rng, height, width, int(rng.integers(500, 900)))
  attributes = np.zeros((height, width, schema.NUM_ATTRIBUTES), np.uint8)
  chosen_all = np.zeros(int(superpixels.max()) + 1, bool)
  evidence = np.zeros((height, width), bool)
  before = body.copy()
  for kind, chosen in _sites(rng, superpixels, lesion, cy, cx, r0, radius_at):
    choices = STRUCTURES[kind][0 if malignant else 1]
    if not with_globules:
      choices = tuple(c for c in choices if c != "globules")
    structure = choices[int(rng.integers(len(choices)))]
    region = chosen[superpixels] & lesion
    darken = np.float32(rng.uniform(-15, 0))
    if not region.any():
      continue
    pattern = _site_pattern(rng, kind, structure, malignant, yy, xx, cy, cx, theta, r0)
    target = body[region].mean(0) + darken
    drawn = body[region] + np.float32(strength) * pattern[region]
    body[region] = drawn - drawn.mean(0) + target  # the site's mean colour: label-free
    evidence |= region
    chosen_all |= chosen
    if structure is not None:
      attributes[..., _ATTR[structure]] |= chosen[superpixels].astype(np.uint8)
  edge = np.clip((radius - dist) / 2.5, 0, 1)[..., None]
  image_before = image * (1 - edge) + before * edge
  image = image * (1 - edge) + body * edge
  features = {}
  for k, name in enumerate(schema.ATTRIBUTES[:4]):  # superpixels wholly chosen per class
    on = np.bincount(superpixels.ravel(), weights=attributes[..., k].ravel(),
                     minlength=len(chosen_all)) > 0
    features[name] = on.astype(int).tolist()
  out = {
      "image": _confounders(rng, image, side),
      "lesion_mask": lesion.astype(np.uint8),
      "attribute_masks": attributes,
      "superpixels": superpixels,
      "features": features,
      "evidence_mask": evidence.astype(np.uint8),
      "jpeg_quality": int(rng.integers(55, 96)),
  }
  if return_layers:
    out.update(before_structures=image_before, after_structures=image)
  return out
