"""Decoding and checking one example's files (image, masks, superpixels, features JSON)."""

import json

import numpy as np
from PIL import Image

from dermjax.data import schema
from dermjax.data.errors import DatasetError
from dermjax.data.isic.listing import Example

# The 2017 features JSON keys (= the first four schema.ATTRIBUTES).
ATTRIBUTES_2017 = schema.ATTRIBUTES[:4]


def read_image(path) -> np.ndarray:
  """JPEG -> uint8 [H, W, 3] RGB; DatasetError naming the file if it cannot be decoded."""
  try:
    with Image.open(path) as im:
      im.load()
      return np.asarray(im.convert("RGB"))
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise DatasetError((path, f"unreadable or truncated image: {e}")) from e


def read_mask(path, shape) -> np.ndarray:
  """Binary PNG (0/255 or 0/1) -> uint8 [H, W] 0/1, checked against the image `shape`."""
  try:
    with Image.open(path) as im:
      im.load()
      mask = np.asarray(im if im.mode in ("L", "1", "P", "I", "I;16") else im.convert("L"))
  except Exception as e:
    raise DatasetError((path, f"unreadable mask: {e}")) from e
  if mask.shape != tuple(shape):
    raise DatasetError((path, f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from "
                        f"its image's {shape[1]}x{shape[0]}"))
  if mask.dtype == bool:
    return mask.astype(np.uint8)
  values = np.unique(mask) if mask.dtype != np.uint8 else np.flatnonzero(
      np.bincount(mask.ravel(), minlength=256))
  if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
    raise DatasetError((path, f"mask is not binary: values {values[:8].tolist()} "
                        "(expected 0 and 255, or 0 and 1)"))
  return (mask > 0).astype(np.uint8)


def read_superpixels(path, shape) -> np.ndarray:
  """Superpixel PNG -> int32 [H, W] index = R + (G << 8) + (B << 16)."""
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode != "RGB":
        raise ValueError(f"mode {im.mode}, expected RGB")
      rgb = np.asarray(im).astype(np.int32)
  except Exception as e:
    raise DatasetError((path, f"unreadable superpixels: {e}")) from e
  if rgb.shape[:2] != tuple(shape):
    raise DatasetError((path, f"superpixel size {rgb.shape[1]}x{rgb.shape[0]} (WxH) differs "
                        f"from its image's {shape[1]}x{shape[0]}"))
  return rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)


def superpixel_attributes(features_path, superpixels) -> np.ndarray:
  """Features JSON + int32 [H, W] superpixels -> uint8 [H, W, len(ATTRIBUTES_2017)] 0/1."""
  try:
    with open(features_path, encoding="utf-8") as f:
      features = json.load(f)
  except (OSError, ValueError) as e:
    raise DatasetError((features_path, f"unreadable features JSON: {e}")) from e
  if not isinstance(features, dict):
    raise DatasetError((features_path, "features JSON is not an object"))
  needed = int(superpixels.max()) + 1
  masks = []
  for name in ATTRIBUTES_2017:
    if name not in features:
      raise DatasetError((features_path, f"missing key {name!r}"))
    try:
      values = np.asarray(features[name], dtype=np.float64)
    except (TypeError, ValueError) as e:
      raise DatasetError((features_path, f"{name!r} is not a list of numbers")) from e
    if values.ndim != 1 or len(values) < needed:
      raise DatasetError((features_path, f"{name!r} has {values.size} entries but the "
                          f"superpixel image has indices up to {needed - 1}"))
    if not np.all((values == 0) | (values == 1)):
      raise DatasetError((features_path, f"{name!r} has values other than 0 and 1"))
    masks.append(values.astype(np.uint8)[superpixels])
  return np.stack(masks, axis=-1)


def load_example(example: Example, split: str | None = None) -> dict:
  """Decode and check one example -> record (schema.py); DatasetError names the bad file."""
  image = read_image(example.image)
  shape = image.shape[:2]
  lesion = np.zeros(shape, np.uint8)
  attributes = np.zeros(shape + (schema.NUM_ATTRIBUTES,), np.uint8)
  if example.lesion_mask:
    lesion = read_mask(example.lesion_mask, shape)
  has_attributes = False
  if example.features:
    superpixels = read_superpixels(example.superpixels, shape)
    attributes[..., :len(ATTRIBUTES_2017)] = superpixel_attributes(example.features, superpixels)
    has_attributes = True
  elif example.attribute_masks:
    for k, path in enumerate(example.attribute_masks):
      attributes[..., k] = read_mask(path, shape)
    has_attributes = True
  evidence = (read_mask(example.evidence_mask, shape) if example.evidence_mask
              else np.zeros(shape, np.uint8))
  return {
      "id": example.id,
      "split": split or example.split,
      "image": image,
      "melanoma": np.int32(example.melanoma),
      "keratosis": np.int32(example.keratosis),
      "label": np.int32(example.label),
      "lesion_mask": lesion,
      "attribute_masks": attributes,
      "has_lesion_mask": np.bool_(example.lesion_mask is not None),
      "has_attributes": np.bool_(has_attributes),
      "evidence_mask": evidence,
      "has_evidence_mask": np.bool_(example.evidence_mask is not None),
      "age": np.float32(example.age),
      "sex": np.int32(example.sex),
      "site": np.int32(example.site),
      "patient_id": example.patient_id,
  }
