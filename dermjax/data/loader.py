"""Per-example host preprocessing: one ISIC record -> one example of the batch format.

  record (schema.py, original resolution)
    -> crop box (data.crop) in the original image, resampled straight to S x S
    -> uint8 image [S, S, 3], nearest-neighbour masks, labels, metadata (schema.py)

Geometry (data.crop), with S = image_size, R = resize_size:
  "resize_center_crop"  resize the whole image to R x R, keep the central S x S (thesis:
                        R = 256, S = 224).
  "center_fraction"     keep the central square of side crop_fraction * min(H, W), resize it
                        to R x R, keep the central S x S (AttnMel: fraction 0.8, R = S).
With data.source_size R > 0 the same box is also resampled to R x R ("source_image", a
higher-resolution copy for models that crop from it, e.g. MASLL's crop_source "source").
Stored JPEGs are decoded at reduced size when the crop allows (PIL draft mode), so
multi-megapixel images cost little more than small ones. dermjax.input_pipeline batches
these examples with grain.
"""

import dataclasses
import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from dermjax.data import codec
from dermjax.data import schema
from dermjax.metrics import faithfulness

CROPS = ("resize_center_crop", "center_fraction")
# config.data.target -> the record field that is its label. "seborrheic_keratosis" (ISIC 2017
# sub-task 2, seborrheic keratosis vs rest) is the documented name; "keratosis" an alias.
TARGETS = {"melanoma": "melanoma", "multiclass": "label", "seborrheic_keratosis": "keratosis",
           "keratosis": "keratosis"}
MASK_CHANNELS = 1 + schema.NUM_ATTRIBUTES

def crop_box(height, width, *, image_size, resize_size, crop, crop_fraction=0.8):
  """The region of an H x W image that becomes the S x S output: (left, top, right, bottom)."""
  if crop not in CROPS:
    raise ValueError(f"data.crop must be one of {CROPS}, got {crop!r}")
  if not 0 < image_size <= resize_size:
    raise ValueError(f"data.image_size ({image_size}) must be in (0, data.resize_size = "
                     f"{resize_size}]")
  if crop == "center_fraction":
    if not 0 < crop_fraction <= 1:
      raise ValueError(f"data.crop_fraction must be in (0, 1], got {crop_fraction}")
    side_h = side_w = crop_fraction * min(height, width)
  else:
    side_h, side_w = height, width
  keep = image_size / resize_size
  half_h, half_w = side_h * keep / 2, side_w * keep / 2
  return (width / 2 - half_w, height / 2 - half_h, width / 2 + half_w, height / 2 + half_h)


def resize_image(image, box, size):
  """uint8 [H, W, 3] (or a PIL image) -> uint8 [size, size, 3]: the box resampled bilinearly
  (PIL's filter widens with the scale, so downsizing is antialiased)."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  return np.asarray(image.resize((size, size), Image.BILINEAR, box=box))


def host_images(image, box, image_size, source_size=0) -> dict:
  """uint8 [H, W, 3] (or PIL) and its crop box -> {"image": uint8 [S, S, 3]} plus, when
  source_size R > 0, "source_image": uint8 [R, R, 3], the same box at R x R."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  out = {"image": resize_image(image, box, image_size)}
  if source_size:
    out["source_image"] = resize_image(image, box, source_size)
  return out


def check_source_size(data_config) -> int:
  """config.data.source_size (0: none); raises when it is below data.image_size or set
  together with an evidence ablation (which paints the model input only)."""
  c = data_config
  size = int(c.get("source_size", 0) or 0)
  if size and size < int(c.image_size):
    raise ValueError(f"data.source_size ({size}) must be 0 (none) or >= data.image_size "
                     f"({c.image_size})")
  if size and c.get("evidence_ablation", "none") != "none":
    raise ValueError("data.source_size > 0 cannot be combined with data.evidence_ablation "
                     "(the ablation paints the model input only)")
  return size


def resize_masks(masks, box, size):
  """uint8 [H, W, C] -> uint8 [size, size, C] by nearest neighbour (values stay as they are)."""
  height, width = masks.shape[:2]
  left, top, right, bottom = box
  centres = (np.arange(size) + 0.5) / size
  rows = np.clip(np.floor(top + centres * (bottom - top)), 0, height - 1).astype(np.intp)
  cols = np.clip(np.floor(left + centres * (right - left)), 0, width - 1).astype(np.intp)
  return masks[rows[:, None], cols[None, :]]


def decode_jpeg_for(data, box_fn, size):
  """Encoded image bytes -> (PIL RGB image, its crop box), decoded no larger than needed.

  box_fn(height, width) gives the crop box at full resolution; JPEGs are decoded with
  PIL's draft mode at the smallest 1/1..1/8 DCT scale that still gives the box >= size
  pixels a side (much faster than a full decode of a multi-megapixel dermoscopy image).
  """
  image = Image.open(io.BytesIO(data))
  width, height = image.size
  box = box_fn(height, width)
  if image.format == "JPEG":
    scale = size / max(min(box[2] - box[0], box[3] - box[1]), 1e-6)
    image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
  image = image.convert("RGB")
  sx, sy = image.size[0] / width, image.size[1] / height
  return image, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def target_label(record, target):
  """The diagnosis target of one record (int, -1 if unknown)."""
  return int(record[target_key(target)])


def target_key(target):
  """The record field holding config.data.target's label; raises for an unknown target."""
  if target not in TARGETS:
    raise ValueError(f"data.target must be one of {tuple(TARGETS)}, got {target!r}")
  return TARGETS[target]


EVIDENCE_ABLATIONS = ("none", "blank", "only")


def check_evidence_ablation(mode: str) -> str:
  """Returns config.data.evidence_ablation's mode; raises for an unknown one."""
  if mode not in EVIDENCE_ABLATIONS:
    raise ValueError(f"data.evidence_ablation must be one of {EVIDENCE_ABLATIONS}, got {mode!r}")
  return mode


def ablate_evidence(image, lesion, has_lesion, evidence, has_evidence, mode: str = "none"):
  """Checks that the label lives in the evidence (synthetic hard preset, issue #17).

  image uint8 [S, S, 3], lesion / evidence 0/1 [S, S], has_lesion / has_evidence: bools ->
  uint8 [S, S, 3]. The evidence is grown by one pixel (resampling blurs structure edges past
  the nearest-neighbour mask); "the rest" is the lesion (the whole image without a lesion
  mask) outside it. "blank" paints the grown evidence in the rest's mean colour (skin colour,
  as deletion curves use, where it leaves the lesion): the lesion keeps its shape and colour
  but loses the structures that carry the label. "only" paints the rest in that colour: the
  evidence is the only lesion texture left. Skin stays in both (its confounders are
  label-free). Without an evidence mask "blank" changes nothing and "only" flattens the
  whole lesion (nothing is known to carry the label).
  """
  if check_evidence_ablation(mode) == "none" or (mode == "blank" and not has_evidence):
    return image
  grown = (ndimage.binary_dilation(np.asarray(evidence) > 0, np.ones((3, 3), bool))
           if has_evidence else np.zeros(image.shape[:2], bool))
  region = np.asarray(lesion) > 0 if has_lesion else np.ones(image.shape[:2], bool)
  rest = region & ~grown
  skin = faithfulness.skin_colour(image[None], lesion[None], np.float32([has_lesion]), xp=np)[0]
  rest_colour = image[rest].mean(0) if rest.any() else skin
  out = np.array(image)
  if mode == "blank":
    out[grown & region] = np.round(rest_colour).astype(np.uint8)
    out[grown & ~region] = np.round(skin).astype(np.uint8)
  else:
    out[rest] = np.round(rest_colour).astype(np.uint8)
  return out


@dataclasses.dataclass(frozen=True)
class ExampleLoader:
  """Split position -> one host example (batch format without the batch axis).

  source: random-access records (schema.py). Picklable for grain worker processes.
  Position -1 gives a padding example (valid = 0, index = -1).
  """
  source: object
  image_size: int
  resize_size: int
  crop: str
  crop_fraction: float
  target: str
  evidence_ablation: str = "none"   # | "blank" | "only" (ablate_evidence)
  source_size: int = 0              # > 0: also "source_image" [R, R, 3] (host_images)

  def box(self, height, width):
    return crop_box(height, width, image_size=self.image_size, resize_size=self.resize_size,
                    crop=self.crop, crop_fraction=self.crop_fraction)

  def padding(self):
    return schema.padding_batch(self.image_size, source_size=self.source_size)

  def resize_masks(self, masks, box):
    """masks as `read` returns them -> uint8 [S, S, 1+A]."""
    return resize_masks(masks, box, self.image_size)

  def read(self, index):
    """-> (record fields, image (array or PIL), its crop box, masks [H, W, 1+A(+1)], their
    box); the optional last channel is the record's evidence mask."""
    record = self.source[index]
    image = record["image"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"record {record.get('id', index)}: image must be uint8 [H, W, 3], got "
                       f"{image.dtype} {image.shape}")
    channels = [record["lesion_mask"][..., None], record["attribute_masks"]]
    if "evidence_mask" in record:
      channels.append(record["evidence_mask"][..., None])
    masks = np.concatenate(channels, -1)
    box = self.box(*image.shape[:2])
    return record, image, box, masks, box

  def __call__(self, index):
    index = int(index)
    if index < 0:
      return self.padding()
    record, image, image_box, masks, masks_box = self.read(index)
    masks = self.resize_masks(masks, masks_box)
    evidence = np.zeros(masks.shape[:2], np.uint8)
    if masks.shape[-1] == MASK_CHANNELS + 1:
      masks, evidence = masks[..., :-1], masks[..., -1]
    if masks.shape[-1] != MASK_CHANNELS:
      raise ValueError(f"record {record.get('id', index)}: {masks.shape[-1]} mask channels, "
                       f"expected 1 + {schema.NUM_ATTRIBUTES}")
    has_evidence = record.get("has_evidence_mask", False)
    images = host_images(image, image_box, self.image_size, self.source_size)
    images["image"] = ablate_evidence(images["image"], masks[..., 0], record["has_lesion_mask"],
                                      evidence, has_evidence, self.evidence_ablation)
    return {
        **images,
        "masks": masks,
        "has_lesion_mask": np.float32(record["has_lesion_mask"]),
        "has_attributes": np.float32(record["has_attributes"]),
        "evidence_mask": np.ascontiguousarray(evidence),
        "has_evidence_mask": np.float32(has_evidence),
        "label": np.int32(target_label(record, self.target)),
        "melanoma": np.int32(record["melanoma"]),
        "age": np.float32(record.get("age", math.nan)),
        "sex": np.int32(record.get("sex", -1)),
        "site": np.int32(record.get("site", -1)),
        "valid": np.float32(1.0),
        "index": np.int32(index),
    }


class PreparedExampleLoader(ExampleLoader):
  """ExampleLoader over a prepared dataset's stored examples (dermjax.data.prepare): the
  same output, but JPEGs are decoded at reduced size (decode_jpeg_for) straight from the
  stored bytes. source: `prepared.builder.as_data_source(split)` (or a Subset of it)."""

  def read(self, index):
    """Like ExampleLoader.read, but the masks stay bit-packed codes [H, W] (see resize_masks)."""
    example = self.source[index]
    image, image_box = decode_jpeg_for(example["image"], self.box,
                                       max(self.image_size, self.source_size))
    codes = np.asarray(Image.open(io.BytesIO(example["masks"])))
    return example, image, image_box, codes, self.box(*codes.shape[:2])

  def resize_masks(self, masks, box):
    """Packed codes [H, W] -> uint8 [S, S, 1+A+1] (last: evidence): nearest neighbour first,
    then unpacking (they commute, and unpacking S x S codes is far cheaper than H x W)."""
    codes = resize_masks(masks[..., None], box, self.image_size)[..., 0]
    lesion, attributes = codec.unpack_masks(codes)
    evidence = codec.unpack_evidence(codes).astype(np.uint8)
    return np.concatenate([lesion[..., None], attributes, evidence[..., None]], -1)


def loader_from_config(source, data_config, loader_class=ExampleLoader) -> ExampleLoader:
  c = data_config
  return loader_class(source, int(c.image_size), int(c.resize_size), c.crop,
                      float(c.crop_fraction), c.target, c.get("evidence_ablation", "none"),
                      check_source_size(c))
