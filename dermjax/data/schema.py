"""The one record format every ISIC reader yields and every model consumes.

A *record* is a plain dict of numpy values, one per image:

  id             str                 e.g. "ISIC_0000000"
  split          str                 "train" | "validation" | "test"
  image          uint8  [H, W, 3]    RGB as decoded from the file
  melanoma       int32  []           1 melanoma, 0 not, -1 unknown
  keratosis      int32  []           1 seborrheic keratosis, 0 not, -1 unknown
  label          int32  []           index into the set's CLASSES, -1 if the set has none
  lesion_mask    uint8  [H, W]       0/1 lesion segmentation (all 0 if absent)
  attribute_masks uint8 [H, W, A]    0/1 masks, channel order ATTRIBUTES (all 0 if absent)
  has_lesion_mask bool  []           whether lesion_mask is ground truth
  has_attributes  bool  []           whether attribute_masks are ground truth
  evidence_mask  uint8  [H, W]       0/1 pixels that decide the label (synthetic `hard`
                                     preset only; all 0 if absent; optional: readers
                                     of other sources may leave both keys out)
  has_evidence_mask bool []          whether evidence_mask is ground truth
  age            float32 []          years, NaN if missing
  sex            int32  []           index into SEXES, -1 if missing
  site           int32  []           index into SITES, -1 if missing
  patient_id     str                 "" if unknown

The input pipeline's host side yields *batches* (dict of arrays, leading batch axis B),
kept uint8 where possible so host->device transfer stays small:

  image          uint8   [B, H, W, 3]    resized/cropped to config.data.image_size
  masks          uint8   [B, H, W, 1+A]  channel 0 lesion, then ATTRIBUTES (0/1 values)
  has_lesion_mask float32 [B]            1 where masks[..., 0] is ground truth
  has_attributes float32 [B]             1 where masks[..., 1:] are ground truth
  evidence_mask  uint8   [B, H, W]       0/1 evidence (synthetic hard preset), else 0
  has_evidence_mask float32 [B]          1 where evidence_mask is ground truth
  label          int32   [B]             diagnosis target chosen by config.data.target
  melanoma       int32   [B]
  age            float32 [B]             years, NaN if missing (raw: models encode metadata
  sex            int32   [B]             index into SEXES, -1 if missing   themselves, e.g.
  site           int32   [B]             index into SITES, -1 if missing   data/metadata.py)
  valid          float32 [B]             0 for padding rows of the last eval batch
  index          int32   [B]             position in the split (-1 for padding)
  source_image   uint8   [B, R, R, 3]    only with config.data.source_size R > 0: the same
                                         crop box at R x R (a higher-resolution copy)

`batch_spec(image_size, batch_size, source_size=0)` is that table as data: the input
pipeline's padding example, scripts/profile_step.py's synthetic batch and the tests'
batches are made from it.

On device, inside the jitted step, `dermjax.data.augment` turns that into the model's
batch: image float [B, H, W, 3] normalised (config.data.normalization:
dermjax/data/normalization.py) and augmented when training, masks float32 [B, H, W, 1+A]
and source_image float [B, R, R, 3] transformed identically.

Gaze structure masks (the thesis's eqs. 17-19) are derived from `masks` on device by
`dermjax.data.structures.structure_masks`, so augmentation touches one mask stack only.
"""

import numpy as np

# Dermoscopic attributes in channel order. ISIC 2017 annotates the first four;
# ISIC 2018 Task 2 adds globules.
ATTRIBUTES = ("pigment_network", "negative_network", "milia_like_cyst", "streaks", "globules")
NUM_ATTRIBUTES = len(ATTRIBUTES)

# The six structures the gaze model segments, one per gaze (thesis Sec. 4.1, Table 1).
STRUCTURES = ("lesion", "skin", "pigment_network", "negative_network", "milia_like_cyst", "streaks")
NUM_STRUCTURES = len(STRUCTURES)
# Attributes that count as "dermo" structures for the gaze model (eq. 17), by ATTRIBUTES index.
GAZE_ATTRIBUTE_INDICES = (0, 1, 2, 3)

SPLITS = ("train", "validation", "test")

SEXES = ("male", "female")
# ISIC 2019/2020 `anatom_site_general(_challenge)` vocabulary.
SITES = (
    "head/neck",
    "upper extremity",
    "lower extremity",
    "torso",
    "anterior torso",
    "posterior torso",
    "lateral torso",
    "palms/soles",
    "oral/genital",
)

# Diagnosis classes per layout (index = record["label"]).
CLASSES = {
    "isic2016": ("benign", "malignant"),
    "isic2017": ("nevus", "melanoma", "seborrheic_keratosis"),
    "isic2018": ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
    "isic2019": ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"),
    "isic2020": ("benign", "malignant"),
}

# Metadata feature vector of dermjax.data.metadata.encode: [age/100, age_missing,
# sex one-hot (2), sex_missing, site one-hot (len(SITES)), site_missing].
META_DIM = 2 + len(SEXES) + 1 + len(SITES) + 1

# Host batch entries: name -> (shape after the batch axis, with "S" for image_size; dtype;
# value of a padding row).
_BATCH = {
    "image": (("S", "S", 3), "uint8", 0),
    "masks": (("S", "S", 1 + NUM_ATTRIBUTES), "uint8", 0),
    "has_lesion_mask": ((), "float32", 0.0),
    "has_attributes": ((), "float32", 0.0),
    "evidence_mask": (("S", "S"), "uint8", 0),
    "has_evidence_mask": ((), "float32", 0.0),
    "label": ((), "int32", -1),
    "melanoma": ((), "int32", -1),
    "age": ((), "float32", float("nan")),
    "sex": ((), "int32", -1),
    "site": ((), "int32", -1),
    "valid": ((), "float32", 0.0),
    "index": ((), "int32", -1),
}


_SOURCE = {"source_image": (("R", "R", 3), "uint8", 0)}


def _entries(source_size):
  return {**_BATCH, **_SOURCE} if source_size else _BATCH


def batch_spec(image_size: int, batch_size: int | None = None, source_size: int = 0) -> dict:
  """{name: (shape, numpy dtype)} of a host batch; batch_size None: one example, no batch
  axis; source_size R > 0 adds "source_image" [R, R, 3]."""
  lead = () if batch_size is None else (int(batch_size),)
  sides = {"S": int(image_size), "R": int(source_size)}
  return {name: (lead + tuple(sides.get(d, d) for d in shape), np.dtype(dtype))
          for name, (shape, dtype, _) in _entries(source_size).items()}


def padding_batch(image_size: int, batch_size: int | None = None, source_size: int = 0) -> dict:
  """A host batch (or example) of padding rows: valid 0, labels/index -1, age NaN, zeros."""
  entries = _entries(source_size)
  return {name: np.full(shape, entries[name][2], dtype)
          for name, (shape, dtype) in batch_spec(image_size, batch_size, source_size).items()}
