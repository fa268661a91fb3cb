"""Synthetic ISIC data in the exact official on-disk layouts (numpy + PIL only).

  python -m dermjax.data.synthetic --layout=isic2017 --out=DIR [--num_train=240 ...]

Each image is a skin-coloured, non-square JPEG with one lesion. Melanomas differ from
benign lesions in ways a small CNN sees even at 64 px: an irregular multi-lobed border,
two or three colours including black and blue-grey, and (often) radial streaks; nevi are
round/oval and uniformly brown; seborrheic keratoses are light tan with milia-like cysts.
Metadata (2017, 2019, 2020) have missing values; in isic2020 the age is also a melanoma
signal (older patients), so models that read metadata have something to learn from it.
Superpixels are a jittered-grid Voronoi partition of ~500-900 segments (indices well
above 256, stored as R + (G << 8) + (B << 16)). Every attribute region is a union of
superpixels, its pattern is drawn only inside that region, and its mask (2018) or its
features-JSON entries (2017) mark exactly that region, so decoding the official files
gives back exactly what was drawn. Deterministic from the seed.

Difficulty (`--difficulty`, config.data.synthetic_difficulty): "easy" is the above (every
model separates it at once); "hard" or a strength in [0, 1] draws dermjax.data.synthetic_hard
instead: the melanoma label lives only in local structures at known places, global cues
are label-free, label-independent confounders vary, 3% of labels are flipped, and each
image's evidence mask (the pixels that decide the label) is written to
`dermjax_evidence/<id>_evidence.png` (0/255), a folder no official ISIC reader looks at.
"""

import argparse
import csv
import json
import os

import numpy as np
from PIL import Image

from dermjax.data import drawing
from dermjax.data import isic
from dermjax.data import schema
from dermjax.data import synthetic_hard

DIFFICULTIES = ("easy", "hard")
HARD_STRENGTH = 1.0      # structure opacity of "hard" (gaze CPU default, 2 epochs: test AUC 0.87 at
                         # 1.0, 0.49 at 0.7; lower strengths are harder still)
LABEL_NOISE = 0.03       # share of hard-preset labels flipped (drawn as the other class)
EVIDENCE_DIR = isic.EVIDENCE_DIR

# Official split -> count defaults (small: a CPU model trains on them in minutes).
DEFAULT_NUM_IMAGES = {"train": 240, "validation": 60, "test": 120}

# File-name split tokens of each layout, in order; splits a layout lacks are folded into
# the training set (their images are carved out again by isic.assign_splits). ISIC 2019's
# test split is written as the official one (Test_Input + the published Test_GroundTruth).
_TOKENS = {
    "isic2016": {"train": "Training", "validation": "Training", "test": "Test"},
    "isic2017": {"train": "Training", "validation": "Validation", "test": "Test_v2"},
    "isic2018": {"train": "Training", "validation": "Validation", "test": "Test"},
    "isic2018_task3": {"train": "Training", "validation": "Validation", "test": "Test"},
    "isic2019": {"train": "Training", "validation": "Training", "test": "Test"},
    "isic2020": {"train": "Training", "validation": "Training", "test": "Training"},
}
LAYOUTS = tuple(_TOKENS)

# Diagnosis prior per layout: (class name, probability, drawing style).
_DIAGNOSES = {
    "isic2016": (("benign", .7, "nevus"), ("malignant", .3, "melanoma")),
    "isic2017": (("nevus", .5, "nevus"), ("melanoma", .3, "melanoma"),
                 ("seborrheic_keratosis", .2, "keratosis")),
    "isic2018": (("MEL", .3, "melanoma"), ("NV", .4, "nevus"), ("BCC", .06, "pink"),
                 ("AKIEC", .05, "red"), ("BKL", .1, "keratosis"), ("DF", .05, "tan"),
                 ("VASC", .04, "vascular")),
    "isic2019": (("MEL", .3, "melanoma"), ("NV", .38, "nevus"), ("BCC", .06, "pink"),
                 ("AK", .05, "red"), ("BKL", .1, "keratosis"), ("DF", .03, "tan"),
                 ("VASC", .03, "vascular"), ("SCC", .05, "red"), ("UNK", 0., "nevus")),
    "isic2020": (("nevus", .55, "nevus"), ("melanoma", .3, "melanoma"),
                 ("seborrheic keratosis", .1, "keratosis"), ("unknown", .05, "tan")),
}
_DIAGNOSES["isic2018_task3"] = _DIAGNOSES["isic2018"]

# Lesion base colour per style (RGB).
_COLOURS = {
    "nevus": (135, 85, 58), "melanoma": (95, 58, 42), "keratosis": (175, 135, 85),
    "pink": (200, 120, 120), "red": (185, 95, 80), "tan": (165, 120, 90),
    "vascular": (150, 40, 65),
}
_BLACK, _BLUE_GREY = np.float32((35, 28, 30)), np.float32((105, 118, 140))

# Probability that a style shows each attribute (schema.ATTRIBUTES order).
_ATTRIBUTE_PROB = {
    "nevus": (.6, .05, .15, .05, .3), "melanoma": (.5, .35, .05, .7, .2),
    "keratosis": (.1, .05, .85, 0., .05),
}
_DEFAULT_ATTRIBUTE_PROB = (.1, .02, .1, 0., .1)

_SITES_2019 = ("anterior torso", "posterior torso", "lateral torso", "head/neck",
               "upper extremity", "lower extremity", "palms/soles", "oral/genital")
_SITES_2020 = ("torso", "head/neck", "upper extremity", "lower extremity", "palms/soles",
               "oral/genital")


# --- drawing ------------------------------------------------------------------------


def draw_lesion(rng, height, width, style, *, with_globules=True):
  """One synthetic dermoscopic image and its ground truth.

  Returns dict: image uint8 [H, W, 3], lesion_mask uint8 [H, W] 0/1, attribute_masks
  uint8 [H, W, A] 0/1 (schema.ATTRIBUTES), superpixels int32 [H, W], features
  {attribute: 0/1 list per superpixel} for the first four attributes.
  """
  yy = np.arange(height, dtype=np.float32)[:, None]
  xx = np.arange(width, dtype=np.float32)[None]
  side = min(height, width)
  # Skin: a jittered tone, smooth shading, grain.
  skin = (np.array((222, 172, 148.)) + rng.uniform(-18, 18, 3)).astype(np.float32)
  image = skin + 10 * drawing.smooth_noise(rng, yy, xx, side)[..., None]
  image += rng.normal(0, 3, (height, width, 1)).astype(np.float32)

  # Lesion shape: d < r(theta); melanomas get several lobes.
  cy, cx = height / 2 + rng.uniform(-.08, .08) * height, width / 2 + rng.uniform(-.08, .08) * width
  r0 = rng.uniform(.22, .3) * side
  theta = np.arctan2(yy - cy, xx - cx)
  dist = np.hypot(yy - cy, xx - cx)
  radius = np.ones_like(theta)
  if style == "melanoma":
    for k in range(3, 7):
      radius += rng.uniform(.07, .14) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
  else:
    radius += rng.uniform(0, .15) * np.cos(2 * (theta - rng.uniform(0, np.pi)))
  radius = r0 * np.maximum(radius, .45)
  lesion = dist < radius

  colour = (np.array(_COLOURS[style], np.float64) + rng.uniform(-10, 10, 3)).astype(np.float32)
  shade = (1 - np.float32(.15) * (1 - dist / radius))[..., None]  # darker centre
  body = colour * shade + 4 * drawing.smooth_noise(rng, yy, xx, r0)[..., None]
  if style == "melanoma":  # two or three colour blobs: black and blue-grey
    for tone in ([_BLACK, _BLUE_GREY] + ([_BLACK] if rng.random() < .5 else [])):
      a = rng.uniform(0, 2 * np.pi)
      by, bx = cy + .4 * r0 * np.sin(a), cx + .4 * r0 * np.cos(a)
      blob = np.hypot(yy - by, xx - bx) < rng.uniform(.35, .55) * r0 * (
          1 + .25 * drawing.smooth_noise(rng, yy, xx, r0 / 3))
      body = np.where((blob & lesion)[..., None], tone + rng.normal(0, 6, 3).astype(np.float32),
                      body)
  edge = np.clip((radius - dist) / 2.5, 0, 1)[..., None]  # soft 2-3 px border
  image = image * (1 - edge) + body * edge

  # Attribute regions: disjoint unions of superpixels.
  superpixels = drawing.superpixel_grid(rng, height, width, int(rng.integers(500, 900)))
  flat = superpixels.ravel()
  count = np.bincount(flat)
  inside = np.bincount(flat, weights=lesion.ravel()) / count
  sy = np.bincount(flat, weights=np.broadcast_to(yy, lesion.shape).ravel()) / count
  sx = np.bincount(flat, weights=np.broadcast_to(xx, lesion.shape).ravel()) / count
  s_theta = np.arctan2(sy - cy, sx - cx)
  free = np.ones(len(count), bool)
  probs = _ATTRIBUTE_PROB.get(style, _DEFAULT_ATTRIBUTE_PROB)
  attributes = np.zeros((height, width, schema.NUM_ATTRIBUTES), np.uint8)
  features = {}
  for k, name in enumerate(schema.ATTRIBUTES):
    present = rng.random() < probs[k] and (with_globules or name != "globules")
    chosen = np.zeros(len(count), bool)
    if present and name == "streaks":  # border superpixels in one or two sectors
      for _ in range(int(rng.integers(1, 3))):
        centre, half = rng.uniform(-np.pi, np.pi), rng.uniform(.5, .9)
        gap = np.abs(np.angle(np.exp(1j * (s_theta - centre))))
        chosen |= (gap < half) & (inside > .15) & (inside < .95)
    elif present:  # inner superpixels near a random point of the lesion
      a, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0, .4) * r0
      py, px = cy + rr * np.sin(a), cx + rr * np.cos(a)
      chosen = (inside > .97) & (np.hypot(sy - py, sx - px) < rng.uniform(.4, .7) * r0)
    chosen &= free
    free &= ~chosen
    mask = chosen[superpixels]
    attributes[..., k] = mask
    if k < 4:
      features[name] = chosen.astype(int).tolist()
    if not mask.any():
      continue
    if name == "pigment_network":
      period = rng.uniform(6, 9)
      pattern = ((xx % period) < 2) | ((yy % period) < 2)
      image = np.where((mask & pattern)[..., None], image * np.float32(.55), image)
    elif name == "negative_network":
      period = rng.uniform(7, 10)
      lines = ((xx % period) < 2) | ((yy % period) < 2)
      image = np.where(mask[..., None], np.where(lines[..., None], image * np.float32(.5) + 110,
                                                 image * np.float32(.7)), image)
    elif name == "streaks":
      spokes = ((theta * rng.integers(18, 30) / (2 * np.pi)) % 1) < .4
      image = np.where((mask & spokes)[..., None], _BLACK + 15, image)
    else:  # dots: milia-like cysts bright, globules dark brown
      dots = np.zeros((height, width), bool)
      ys, xs = np.nonzero(mask)
      for i in rng.choice(len(ys), size=max(1, len(ys) // 120), replace=True):
        y0, x0 = max(ys[i] - 3, 0), max(xs[i] - 3, 0)
        window = dots[y0:ys[i] + 4, x0:xs[i] + 4]
        window |= np.hypot(yy[y0:ys[i] + 4] - ys[i], xx[:, x0:xs[i] + 4] - xs[i]) < rng.uniform(1.5, 3)
      tone = np.float32((238, 228, 195) if name == "milia_like_cyst" else (62, 36, 26))
      image = np.where((dots & mask)[..., None], tone, image)
  return {
      "image": np.clip(image, 0, 255).astype(np.uint8),
      "lesion_mask": lesion.astype(np.uint8),
      "attribute_masks": attributes,
      "superpixels": superpixels,
      "features": features,
  }


# --- datasets -----------------------------------------------------------------------


def difficulty_strength(difficulty) -> float | None:
  """"easy" -> None (the easy drawing); "hard" -> HARD_STRENGTH; a number in [0, 1] (or its
  string) -> that structure strength of the hard drawing."""
  if difficulty is None or difficulty == "easy":
    return None
  if difficulty == "hard":
    return HARD_STRENGTH
  try:
    strength = float(difficulty)
  except (TypeError, ValueError):
    raise ValueError(f"difficulty must be one of {DIFFICULTIES} or a number in [0, 1], "
                     f"got {difficulty!r}") from None
  if not 0 <= strength <= 1:
    raise ValueError(f"difficulty strength must be in [0, 1], got {strength}")
  return strength


def _metadata(rng, layout, index, style, informative_age=True):
  """Age (years, "" missing), sex, site, patient and lesion ids of one image. In isic2020 the
  age carries a melanoma signal (melanoma 55-85, others 20-65) for metadata models to learn;
  the other layouts' metadata are independent of the diagnosis."""
  if layout == "isic2020" and informative_age:
    low, high = (11, 18) if style == "melanoma" else (4, 14)
    age = "" if rng.random() < .08 else float(5 * rng.integers(low, high))
  else:
    age = "" if rng.random() < .08 else float(5 * rng.integers(4, 18))
  sex = "" if rng.random() < .05 else ("male", "female")[int(rng.integers(2))]
  sites = _SITES_2020 if layout == "isic2020" else _SITES_2019
  site = "" if rng.random() < .05 else sites[int(rng.integers(len(sites)))]
  return {"age": age, "sex": sex, "site": site, "patient": f"IP_{index // 2:07d}",
          "lesion": f"IL_{index:07d}"}


def iter_examples(layout, num_images=None, *, seed=0, min_side=240, max_side=400,
                  difficulty="easy", age_signal=None):
  """Yields (split token, image id, diagnosis index, metadata, drawn dict), in file order.

  difficulty: see the module docstring; the hard drawing adds "evidence_mask" and
  "jpeg_quality" to the drawn dict (and "malignant_drawn": the class actually drawn).
  age_signal: whether isic2020's age carries the melanoma signal; None: on the easy drawing
  only (the hard one keeps the label in the evidence alone)."""
  strength = difficulty_strength(difficulty)
  informative_age = strength is None if age_signal is None else bool(age_signal)
  if layout not in _TOKENS:
    raise ValueError(f"Unknown layout {layout!r}; known: {LAYOUTS}")
  counts = dict(DEFAULT_NUM_IMAGES, **(num_images or {}))
  diagnoses = _DIAGNOSES[layout]
  probs = np.array([p for _, p, _ in diagnoses])
  index = 0
  for split in schema.SPLITS:
    for _ in range(counts.get(split, 0)):
      rng = np.random.default_rng([seed, index])
      height = int(rng.integers(min_side, max_side + 1))
      width = int(rng.integers(min_side, max_side + 1))
      if width == height:
        width = height + 1 if height < max_side else height - 1
      diagnosis = int(rng.choice(len(diagnoses), p=probs / probs.sum()))
      style = diagnoses[diagnosis][2]
      if strength is None:
        drawn = draw_lesion(rng, height, width, style, with_globules=layout == "isic2018")
      else:
        malignant = (style == "melanoma") != (rng.random() < LABEL_NOISE)
        drawn = synthetic_hard.draw_hard(rng, height, width, malignant=malignant,
                                         strength=strength, with_globules=layout == "isic2018")
        drawn["malignant_drawn"] = malignant
      yield _TOKENS[layout][split], f"ISIC_{index:07d}", diagnosis, _metadata(
          rng, layout, index, style, informative_age=informative_age), drawn
      index += 1


def shared_lesion(image_id: str) -> str:
  """ISIC 2019's lesion_id of a synthetic image: of every six consecutive images, the first
  three show one lesion, the next two another, the last its own (ISIC_0000007 -> IL_0000006)."""
  index = int(image_id.rsplit("_", 1)[1])
  return f"IL_{index - index % 6 + (0, 0, 0, 3, 3, 5)[index % 6]:07d}"


class _Csvs:
  """Open CSV writers keyed by path (header written on first use)."""

  def __init__(self):
    self.files = {}

  def row(self, path, header, values):
    if path not in self.files:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      f = open(path, "w", newline="", encoding="utf-8")
      self.files[path] = (f, csv.writer(f))
      if header:
        self.files[path][1].writerow(header)
    self.files[path][1].writerow(values)

  def close(self):
    for f, _ in self.files.values():
      f.close()


def _save(array, path, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def _save_superpixels(superpixels, path):
  rgb = np.stack([superpixels & 255, (superpixels >> 8) & 255, superpixels >> 16], -1)
  _save(rgb.astype(np.uint8), path)


def write_synthetic(layout: str, out_dir: str, *, num_images: dict | None = None,
                    seed: int = 0, min_side: int = 240, max_side: int = 400,
                    difficulty="easy", age_signal=None) -> str:
  """Writes a synthetic dataset in `layout`'s official file layout under `out_dir`.

  num_images: {split: count}, default DEFAULT_NUM_IMAGES; for sets without an official
  validation/test split (2016 validation, 2019, 2020) those images go to the training set.
  difficulty: "easy" | "hard" | a strength in [0, 1] (module docstring); age_signal: see
  iter_examples. Returns out_dir.
  """
  o = lambda *parts: os.path.join(out_dir, *parts)
  names = [n for n, _, _ in _DIAGNOSES[layout]]
  csvs = _Csvs()
  try:
    for s, i, diagnosis, meta, drawn in iter_examples(
        layout, num_images, seed=seed, min_side=min_side, max_side=max_side,
        difficulty=difficulty, age_signal=age_signal):
      name = names[diagnosis]
      quality = drawn.get("jpeg_quality", 92)
      if "evidence_mask" in drawn:
        _save(drawn["evidence_mask"] * 255, o(EVIDENCE_DIR, i + "_evidence.png"))
      lesion = drawn["lesion_mask"] * 255
      if layout == "isic2016":
        _save(drawn["image"], o(f"ISBI2016_ISIC_Part3_{s}_Data", i + ".jpg"), quality=quality)
        _save(lesion, o(f"ISBI2016_ISIC_Part1_{s}_GroundTruth", i + "_Segmentation.png"))
        value = name if s == "Training" else f"{float(name == 'malignant'):.1f}"
        csvs.row(o(f"ISBI2016_ISIC_Part3_{s}_GroundTruth.csv"), None, [i, value])
      elif layout == "isic2017":
        data = o(f"ISIC-2017_{s}_Data")
        _save(drawn["image"], os.path.join(data, i + ".jpg"), quality=quality)
        _save_superpixels(drawn["superpixels"], os.path.join(data, i + "_superpixels.png"))
        _save(lesion, o(f"ISIC-2017_{s}_Part1_GroundTruth", i + "_segmentation.png"))
        os.makedirs(o(f"ISIC-2017_{s}_Part2_GroundTruth"), exist_ok=True)
        with open(o(f"ISIC-2017_{s}_Part2_GroundTruth", i + "_features.json"), "w") as f:
          json.dump(drawn["features"], f)
        csvs.row(o(f"ISIC-2017_{s}_Part3_GroundTruth.csv"),
                 ["image_id", "melanoma", "seborrheic_keratosis"],
                 [i, float(name == "melanoma"), float(name == "seborrheic_keratosis")])
        csvs.row(os.path.join(data, f"ISIC-2017_{s}_Data_metadata.csv"),
                 ["image_id", "age_approximate", "sex"],
                 [i, meta["age"] or "unknown", meta["sex"] or "unknown"])
      elif layout in ("isic2018", "isic2018_task3"):
        one_hot = [float(k == diagnosis) for k in range(len(names))]
        csv_dir = o(f"ISIC2018_Task3_{s}_GroundTruth")
        csvs.row(os.path.join(csv_dir, f"ISIC2018_Task3_{s}_GroundTruth.csv"),
                 ["image"] + names, [i] + one_hot)
        _save(drawn["image"], o(f"ISIC2018_Task3_{s}_Input", i + ".jpg"), quality=quality)
        if layout == "isic2018":
          _save(drawn["image"], o(f"ISIC2018_Task1-2_{s}_Input", i + ".jpg"), quality=quality)
          _save(lesion, o(f"ISIC2018_Task1_{s}_GroundTruth", i + "_segmentation.png"))
          task2 = f"ISIC2018_Task2_{s}_GroundTruth" + ("_v3" if s == "Training" else "")
          for k, a in enumerate(schema.ATTRIBUTES):
            _save(drawn["attribute_masks"][..., k] * 255, o(task2, f"{i}_attribute_{a}.png"))
      elif layout == "isic2019":
        _save(drawn["image"], o(f"ISIC_2019_{s}_Input", i + ".jpg"), quality=quality)
        csvs.row(o(f"ISIC_2019_{s}_GroundTruth.csv"), ["image"] + names,
                 [i] + [float(k == diagnosis) for k in range(len(names))])
        lesion = s == "Training"   # the test metadata have no lesion_id column
        csvs.row(o(f"ISIC_2019_{s}_Metadata.csv"),
                 ["image", "age_approx", "anatom_site_general"] + ["lesion_id"] * lesion + ["sex"],
                 [i, meta["age"], meta["site"]] + [shared_lesion(i)] * lesion + [meta["sex"]])
      elif layout == "isic2020":
        _save(drawn["image"], o("jpeg", "train", i + ".jpg"), quality=quality)
        csvs.row(o("train.csv"), ["image_name", "patient_id", "sex", "age_approx",
                                  "anatom_site_general_challenge", "diagnosis",
                                  "benign_malignant", "target"],
                 [i, meta["patient"], meta["sex"], meta["age"], meta["site"], name,
                  "malignant" if name == "melanoma" else "benign", int(name == "melanoma")])
  finally:
    csvs.close()
  return out_dir


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layout", default="isic2017", choices=LAYOUTS)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_train", type=int, default=DEFAULT_NUM_IMAGES["train"])
  parser.add_argument("--num_validation", type=int, default=DEFAULT_NUM_IMAGES["validation"])
  parser.add_argument("--num_test", type=int, default=DEFAULT_NUM_IMAGES["test"])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min_side", type=int, default=240)
  parser.add_argument("--max_side", type=int, default=400)
  parser.add_argument("--difficulty", default="easy",
                      help="easy | hard | a structure strength in [0, 1] (hard drawing)")
  args = parser.parse_args(argv)
  difficulty_strength(args.difficulty)  # fail early on a bad value
  num = {"train": args.num_train, "validation": args.num_validation, "test": args.num_test}
  write_synthetic(args.layout, args.out, num_images=num, seed=args.seed,
                  min_side=args.min_side, max_side=args.max_side, difficulty=args.difficulty)
  print(f"wrote synthetic {args.layout} ({args.difficulty}) ({sum(num.values())} images) to {args.out}")


if __name__ == "__main__":
  main()
