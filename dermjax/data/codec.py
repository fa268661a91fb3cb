"""The prepared dataset's example format: masks bit-packed into one PNG, the original image
bytes, the record's scalars (dermjax.data.prepare writes it, dermjax.data.loader reads it).

Mask codes: bit 0 the lesion, bit k + 1 schema.ATTRIBUTES[k], bit EVIDENCE_BIT the synthetic
evidence mask.
"""

import io

import numpy as np
from PIL import Image

from dermjax.data import isic
from dermjax.data import schema


# Bit of the packed mask codes that holds the optional evidence mask (after lesion + A).
EVIDENCE_BIT = 1 + schema.NUM_ATTRIBUTES


def pack_masks(lesion, attributes, evidence=None) -> np.ndarray:
  """uint8 [H, W] lesion + [H, W, A] attributes (+ optional [H, W] evidence), 0/1 ->
  uint8 [H, W] bit-packed codes (evidence in bit EVIDENCE_BIT)."""
  codes = lesion.astype(np.uint8).copy()
  for k in range(attributes.shape[-1]):
    codes |= attributes[..., k].astype(np.uint8) << (k + 1)
  if evidence is not None:
    codes |= (evidence > 0).astype(np.uint8) << EVIDENCE_BIT
  return codes


def unpack_evidence(codes):
  """uint8 [...] codes -> uint8 [...] 0/1 evidence mask (0 where none was packed)."""
  return (np.asarray(codes) >> EVIDENCE_BIT) & 1


def unpack_masks(codes):
  """uint8 [H, W] codes -> (lesion [H, W], attributes [H, W, A]), uint8 0/1."""
  bits = (codes[..., None] >> np.arange(1 + schema.NUM_ATTRIBUTES, dtype=np.uint8)) & 1
  return bits[..., 0], bits[..., 1:]


def png(array) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
  return buffer.getvalue()


def encode(example: isic.Example, record: dict, codes) -> dict:
  """Example, its record, its packed masks -> the TFDS example (original image bytes, PNG)."""
  with open(example.image, "rb") as f:
    image_bytes = f.read()
  height, width = record["image"].shape[:2]
  out = {k: record[k] for k in ("id", "melanoma", "keratosis", "label", "has_lesion_mask",
                                "has_attributes", "age", "sex", "site", "patient_id")}
  out["has_evidence_mask"] = np.bool_(record.get("has_evidence_mask", False))
  out.update(image=image_bytes, height=np.int32(height), width=np.int32(width),
             masks=png(codes))
  return out


def decode(example: dict, split: str) -> dict:
  """A stored TFDS example -> record (schema.py)."""
  text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
  image = np.asarray(Image.open(io.BytesIO(example["image"])).convert("RGB"))
  codes = np.asarray(Image.open(io.BytesIO(example["masks"])))
  lesion, attributes = unpack_masks(codes)
  return {
      "id": text(example["id"]),
      "split": split,
      "image": image,
      "melanoma": np.int32(example["melanoma"]),
      "keratosis": np.int32(example["keratosis"]),
      "label": np.int32(example["label"]),
      "lesion_mask": lesion,
      "attribute_masks": attributes,
      "has_lesion_mask": np.bool_(example["has_lesion_mask"]),
      "has_attributes": np.bool_(example["has_attributes"]),
      "evidence_mask": unpack_evidence(codes).astype(np.uint8),
      "has_evidence_mask": np.bool_(example.get("has_evidence_mask", False)),
      "age": np.float32(example["age"]),
      "sex": np.int32(example["sex"]),
      "site": np.int32(example["site"]),
      "patient_id": text(example["patient_id"]),
  }
