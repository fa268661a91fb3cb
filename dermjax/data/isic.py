"""Readers for the official ISIC on-disk layouts (2016-2020), from a local directory.

One table, `_LAYOUTS`, holds every year's path conventions; the code below it is shared.
Reading is two steps so that `prepare` can check a whole dataset in one pass:

  list_examples(layout, root) -> (examples, problems)   CSVs and file names only
  load_example(example)       -> record                  decodes and checks one image

`read_records(layout, root, split)` chains both and yields records (see schema.py).

Layouts (`LAYOUTS`):
  isic2016        ISBI 2016 Part 3 labels (benign/malignant), Part 1 lesion masks.
  isic2017        Part 1 masks, Part 2 superpixel attributes, Part 3 labels, metadata.
  isic2018        Task 1-2 images with Task 1 lesion masks and Task 2 attribute masks
                  (five, incl. globules); Task 3 labels are merged in for the ids that
                  have them (on the official data Task 1-2 and Task 3 are different
                  images, so most records there have label -1).
  isic2018_task3  Task 3 classification (7 classes), no masks.
  isic2019        training set only (the test labels are not public), with metadata.
  isic2020        training set only; Kaggle `train.csv` + `jpeg/train/` or the ISIC-hosted
                  `ISIC_2020_Training_GroundTruth*.csv` + `ISIC_2020_Training_JPEG/train/`.

Splits: official splits are read from their own directories; `validation` (2016, 2019,
2020) and `test` (2019, 2020) are carved out of the official training set by
`assign_splits` (stratified by label, grouped by patient where known, from a seed).

Mask sources are optional as a whole: when a mask directory (or a features directory)
is absent, records have `has_lesion_mask`/`has_attributes` False; when it is present,
every image must have its file. Label CSVs are required where the layout has labels.
Evidence masks (dermjax's synthetic `hard` preset only, never an official file): when
`<root>/dermjax_evidence/` exists, every image must have `<id>_evidence.png` there (the
pixels whose content decides the label); records then carry it as `evidence_mask`.
Where a glob names several files (e.g. GroundTruth.csv and GroundTruth_v2.csv), the
last in sorted order (the newest version) is used.
"""

import csv
import dataclasses
import glob
import json
import math
import os
import warnings
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from dermjax.data import schema
from dermjax.data.errors import DatasetError

LAYOUTS = ("isic2016", "isic2017", "isic2018", "isic2018_task3", "isic2019", "isic2020")

# Folder of evidence masks beside the official files (dermjax.data.synthetic writes it).
EVIDENCE_DIR = "dermjax_evidence"

# The 2017 features JSON keys (= the first four schema.ATTRIBUTES).
ATTRIBUTES_2017 = schema.ATTRIBUTES[:4]


# --- label and metadata CSV formats ------------------------------------------------


def _binary(value):
  """'0', '1', '0.0', '1.0', 'benign', 'malignant' -> 0/1; raises ValueError otherwise."""
  text = value.strip().lower()
  if text in ("benign",):
    return 0
  if text in ("malignant",):
    return 1
  number = float(text)
  if number not in (0.0, 1.0):
    raise ValueError(f"{value!r} is not 0 or 1")
  return int(number)


def _one_hot(columns):
  def parse(row):
    hot = [_binary(row[c]) for c in columns]
    if sum(hot) != 1:
      raise ValueError(f"expected exactly one 1 among {columns}, got {hot}")
    label = hot.index(1)
    return int(columns[label] == "MEL"), -1, label
  return parse


def _parse_2016(row):
  melanoma = _binary(row["label"])
  return melanoma, -1, melanoma


def _parse_2017(row):
  melanoma, keratosis = _binary(row["melanoma"]), _binary(row["seborrheic_keratosis"])
  if melanoma and keratosis:
    raise ValueError("both melanoma and seborrheic_keratosis are 1")
  return melanoma, keratosis, 1 if melanoma else 2 if keratosis else 0


def _parse_2020(row):
  target = _binary(row["target"])
  return target, int(row["diagnosis"].strip().lower() == "seborrheic keratosis"), target


@dataclasses.dataclass(frozen=True)
class CsvFormat:
  """A CSV's id column, required columns, and row parser (row dict -> values)."""
  id_column: str
  columns: tuple
  parse: Callable
  fieldnames: tuple | None = None  # for header-less CSVs


_ONE_HOT_2018 = schema.CLASSES["isic2018"]
_ONE_HOT_2019 = schema.CLASSES["isic2019"]

LABEL_FORMATS = {
    "isic2016": CsvFormat("image", ("image", "label"), _parse_2016, ("image", "label")),
    "isic2017": CsvFormat("image_id", ("image_id", "melanoma", "seborrheic_keratosis"),
                          _parse_2017),
    "isic2018": CsvFormat("image", ("image",) + _ONE_HOT_2018, _one_hot(_ONE_HOT_2018)),
    "isic2019": CsvFormat("image", ("image",) + _ONE_HOT_2019, _one_hot(_ONE_HOT_2019)),
    "isic2020": CsvFormat("image_name", ("image_name", "target", "diagnosis"), _parse_2020),
}

_MISSING = ("", "unknown", "nan", "na", "none")


def _age(text):
  return math.nan if text.strip().lower() in _MISSING else float(text)


def _index(vocabulary, what):
  def parse(text):
    text = text.strip().lower()
    if text in _MISSING:
      return -1
    if text not in vocabulary:
      raise ValueError(f"unknown {what} {text!r}; expected one of {vocabulary}")
    return vocabulary.index(text)
  return parse


_sex = _index(schema.SEXES, "sex")
_site = _index(schema.SITES, "anatomic site")


def _meta(age=None, sex=None, site=None, patient=None):
  """Row parser -> (age, sex, site, patient_id) from the named columns."""
  def parse(row):
    return (_age(row[age]) if age else math.nan, _sex(row[sex]) if sex else -1,
            _site(row[site]) if site else -1, row[patient].strip() if patient else "")
  return parse


META_FORMATS = {
    "isic2017": CsvFormat("image_id", ("image_id", "age_approximate", "sex"),
                          _meta("age_approximate", "sex")),
    "isic2019": CsvFormat("image", ("image", "age_approx", "anatom_site_general", "sex"),
                          _meta("age_approx", "sex", "anatom_site_general")),
    "isic2020": CsvFormat("image_name", ("image_name", "patient_id", "sex", "age_approx",
                                         "anatom_site_general_challenge"),
                          _meta("age_approx", "sex", "anatom_site_general_challenge",
                                "patient_id")),
}


# --- the per-layout path table ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
  """Path conventions of one layout. Paths are globs relative to the dataset root, with
  `{s}` standing for the split's token in file names (e.g. "Training"); each field is a
  tuple of alternatives, the first that matches wins."""
  name: str
  classes: str                      # key into schema.CLASSES
  tokens: dict                      # official split -> file-name token
  derived: tuple = ()               # splits carved out of "train": (split, 1/fraction)
  images: tuple = ()                # image directories
  labels: tuple = ()                # label CSVs (required when given)
  label_format: str = ""
  metadata: tuple = ()              # metadata CSVs (optional)
  meta_format: str = ""
  lesion_masks: tuple = ()          # lesion mask directories (optional)
  lesion_suffix: str = "_segmentation.png"
  features: tuple = ()              # 2017 features-JSON directories (optional)
  attribute_masks: tuple = ()       # 2018 attribute-PNG directories (optional)
  merged_labels: tuple = ()         # extra label CSVs merged in by id, any split (2018)
  merged_format: str = ""


_2018_TASK3_CSVS = ("ISIC2018_Task3_{s}_GroundTruth*/ISIC2018_Task3_{s}_GroundTruth.csv",
                    "ISIC2018_Task3_{s}_GroundTruth.csv")

_LAYOUTS = {
    "isic2016": Layout(
        "isic2016", "isic2016", {"train": "Training", "test": "Test"},
        derived=(("validation", 8),),
        images=("ISBI2016_ISIC_Part3_{s}_Data",),
        labels=("ISBI2016_ISIC_Part3_{s}_GroundTruth.csv",), label_format="isic2016",
        lesion_masks=("ISBI2016_ISIC_Part1_{s}_GroundTruth",),
        lesion_suffix="_Segmentation.png"),
    "isic2017": Layout(
        "isic2017", "isic2017",
        {"train": "Training", "validation": "Validation", "test": "Test_v2"},
        images=("ISIC-2017_{s}_Data",),
        labels=("ISIC-2017_{s}_Part3_GroundTruth.csv",), label_format="isic2017",
        metadata=("ISIC-2017_{s}_Data/ISIC-2017_{s}_Data_metadata.csv",
                  "ISIC-2017_{s}_Data_metadata.csv"), meta_format="isic2017",
        lesion_masks=("ISIC-2017_{s}_Part1_GroundTruth",),
        features=("ISIC-2017_{s}_Part2_GroundTruth",)),
    "isic2018": Layout(
        "isic2018", "isic2018",
        {"train": "Training", "validation": "Validation", "test": "Test"},
        images=("ISIC2018_Task1-2_{s}_Input",),
        lesion_masks=("ISIC2018_Task1_{s}_GroundTruth",),
        attribute_masks=("ISIC2018_Task2_{s}_GroundTruth*",),
        merged_labels=tuple(p.replace("{s}", t) for t in ("Training", "Validation", "Test")
                            for p in _2018_TASK3_CSVS),
        merged_format="isic2018"),
    "isic2018_task3": Layout(
        "isic2018_task3", "isic2018",
        {"train": "Training", "validation": "Validation", "test": "Test"},
        images=("ISIC2018_Task3_{s}_Input",),
        labels=_2018_TASK3_CSVS, label_format="isic2018"),
    "isic2019": Layout(
        "isic2019", "isic2019", {"train": "Training"},
        derived=(("test", 5), ("validation", 8)),
        images=("ISIC_2019_{s}_Input",),
        labels=("ISIC_2019_{s}_GroundTruth.csv",), label_format="isic2019",
        metadata=("ISIC_2019_{s}_Metadata.csv",), meta_format="isic2019"),
    "isic2020": Layout(
        "isic2020", "isic2020", {"train": "Training"},
        derived=(("test", 5), ("validation", 8)),
        images=("jpeg/train", "ISIC_2020_{s}_JPEG/train", "ISIC_2020_{s}_JPEG"),
        labels=("train.csv", "ISIC_2020_{s}_GroundTruth*.csv"), label_format="isic2020",
        metadata=("train.csv", "ISIC_2020_{s}_GroundTruth*.csv"), meta_format="isic2020"),
}


def layout_spec(layout: str) -> Layout:
  if layout not in _LAYOUTS:
    raise ValueError(f"Unknown ISIC layout {layout!r}; known layouts: {LAYOUTS}")
  return _LAYOUTS[layout]


def classes(layout: str) -> tuple:
  """The diagnosis class names `record["label"]` indexes for `layout`."""
  return schema.CLASSES[layout_spec(layout).classes]


def official_splits(layout: str) -> tuple:
  return tuple(layout_spec(layout).tokens)


def _find(root, patterns, token):
  """First alternative with a match (the last match in sorted order), or None."""
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.join(glob.escape(root), pattern.replace("{s}", token))))
    if matches:
      return matches[-1]
  return None


def _expected(root, patterns, token):
  return " or ".join(os.path.join(root, p.replace("{s}", token)) for p in patterns)


# --- listing ------------------------------------------------------------------------


@dataclasses.dataclass
class Example:
  """One image's files and CSV values, before decoding."""
  id: str
  split: str                        # official split ("train" for derived ones)
  image: str
  lesion_mask: str | None = None
  superpixels: str | None = None
  features: str | None = None
  attribute_masks: tuple | None = None  # one path per schema.ATTRIBUTES
  evidence_mask: str | None = None  # dermjax_evidence/<id>_evidence.png (synthetic only)
  melanoma: int = -1
  keratosis: int = -1
  label: int = -1
  age: float = math.nan
  sex: int = -1
  site: int = -1
  patient_id: str = ""


def read_csv(path, fmt: CsvFormat, problems):
  """CSV -> {id: parsed values, None for a bad row}; problems are added to `problems`."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f, fieldnames=fmt.fieldnames)
      rows = list(reader)
      header = reader.fieldnames or []
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    problems.append((path, f"cannot read CSV: {e}"))
    return {}
  missing = [c for c in fmt.columns if c not in header]
  if missing:
    problems.append((path, f"missing column(s) {missing}; found {list(header)}"))
    return {}
  out, bad = {}, []
  for line, row in enumerate(rows, start=1 if fmt.fieldnames else 2):
    if any(row.get(c) is None for c in fmt.columns):
      bad.append(f"line {line}: too few fields")
      continue
    try:
      out[row[fmt.id_column].strip()] = fmt.parse(row)
    except ValueError as e:
      out[row[fmt.id_column].strip()] = None
      bad.append(f"line {line}: {e}")
  if bad:
    problems.append((path, f"{len(bad)} bad row(s): " + "; ".join(bad[:5])))
  return out


def _unmatched(path, ids, problems):
  if ids:
    ids = sorted(ids)
    problems.append((path, f"{len(ids)} id(s) match no image: {', '.join(ids[:10])}"
                     + (" ..." if len(ids) > 10 else "")))


def _list_split(spec: Layout, root, split, merged, problems):
  token = spec.tokens[split]
  image_dir = _find(root, spec.images, token)
  if image_dir is None or not os.path.isdir(image_dir):
    problems.append((_expected(root, spec.images, token), "missing image directory"))
    return []
  ids = sorted(os.path.splitext(n)[0] for n in os.listdir(image_dir)
               if n.lower().endswith((".jpg", ".jpeg")))
  if not ids:
    problems.append((image_dir, "no .jpg images"))
  examples = {i: Example(i, split, os.path.join(image_dir, i + ".jpg")) for i in ids}
  for i in ids:  # keep the real file name (.jpeg / .JPG)
    for ext in (".jpg", ".jpeg", ".JPG", ".JPEG"):
      if os.path.exists(os.path.join(image_dir, i + ext)):
        examples[i].image = os.path.join(image_dir, i + ext)
        break

  if spec.labels:
    path = _find(root, spec.labels, token)
    if path is None:
      problems.append((_expected(root, spec.labels, token), "missing label CSV"))
      return []
    labels = read_csv(path, LABEL_FORMATS[spec.label_format], problems)
    _unmatched(path, labels.keys() - examples.keys(), problems)
    unlabelled = sorted(examples.keys() - labels.keys())
    if unlabelled and labels:
      problems.append((path, f"no row for {len(unlabelled)} image(s) in {image_dir}: "
                       + ", ".join(unlabelled[:10])))
    for i, values in labels.items():
      if i in examples and values:
        examples[i].melanoma, examples[i].keratosis, examples[i].label = values
    examples = {i: e for i, e in examples.items() if labels.get(i)}
  for i, values in merged.items():
    if i in examples and values:
      examples[i].melanoma, examples[i].keratosis, examples[i].label = values

  if spec.metadata:
    path = _find(root, spec.metadata, token)
    if path is not None:
      meta = read_csv(path, META_FORMATS[spec.meta_format], problems)
      _unmatched(path, meta.keys() - examples.keys(), problems)
      for i, values in meta.items():
        if i in examples and values:
          e = examples[i]
          e.age, e.sex, e.site, e.patient_id = values

  def require(path, what, example_id):
    if os.path.exists(path):
      return path
    problems.append((path, f"missing {what} for {example_id}"))
    broken.add(example_id)
    return None

  broken = set()
  mask_dir = _find(root, spec.lesion_masks, token) if spec.lesion_masks else None
  feature_dir = _find(root, spec.features, token) if spec.features else None
  attribute_dir = _find(root, spec.attribute_masks, token) if spec.attribute_masks else None
  evidence_dir = os.path.join(root, EVIDENCE_DIR)
  evidence_dir = evidence_dir if os.path.isdir(evidence_dir) else None
  for i, e in examples.items():
    if evidence_dir:
      e.evidence_mask = require(os.path.join(evidence_dir, i + "_evidence.png"), "evidence mask", i)
    if mask_dir:
      e.lesion_mask = require(os.path.join(mask_dir, i + spec.lesion_suffix), "lesion mask", i)
    if feature_dir:
      e.features = require(os.path.join(feature_dir, i + "_features.json"), "features JSON", i)
      e.superpixels = require(os.path.join(image_dir, i + "_superpixels.png"), "superpixels", i)
    if attribute_dir:
      e.attribute_masks = tuple(
          require(os.path.join(attribute_dir, f"{i}_attribute_{a}.png"), f"{a} mask", i)
          for a in schema.ATTRIBUTES)
  return [e for i, e in sorted(examples.items()) if i not in broken]


def list_examples(layout: str, root: str):
  """All images of `layout` under `root` -> (examples sorted by split then id, problems).

  Reads CSVs and checks file names only; `problems` is a list of (path, what is wrong).
  Examples whose files are incomplete are left out (and named in `problems`).
  """
  spec = layout_spec(layout)
  problems = []
  if not os.path.isdir(root):
    return [], [(root, "dataset directory does not exist")]
  merged = {}
  for pattern in spec.merged_labels:
    path = _find(root, (pattern,), "")
    if path:
      merged.update(read_csv(path, LABEL_FORMATS[spec.merged_format], problems))
  examples = []
  for split in spec.tokens:
    examples += _list_split(spec, root, split, merged, problems)
  return examples, list(dict.fromkeys(problems))  # 2020 reads one CSV twice


# --- decoding -----------------------------------------------------------------------


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


# --- splits -------------------------------------------------------------------------


def stratum(example: Example) -> int:
  """The label splits are stratified by: the class index, else melanoma, else 0."""
  return example.label if example.label >= 0 else max(example.melanoma, 0)


def _stratified_folds(examples, num_folds, seed):
  """Fold index per example, stratified by `stratum`, grouped by patient where known.

  When no class has num_folds members (tiny sets), folds are grouped but not stratified.
  """
  from sklearn.model_selection import GroupKFold, StratifiedGroupKFold  # pylint: disable=g-import-not-at-top
  y = np.array([stratum(e) for e in examples])
  groups = np.array([e.patient_id or e.id for e in examples])
  num_groups = len(np.unique(groups))
  if num_groups < num_folds:
    raise DatasetError(("(training set)", f"{num_groups} images/patients are too few for "
                        f"{num_folds} folds"))
  folds = np.zeros(len(examples), np.int32)
  if np.unique(y, return_counts=True)[1].max() >= num_folds:
    splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  else:
    splitter = GroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  with warnings.catch_warnings():  # rare classes with fewer members than folds are fine
    warnings.filterwarnings("ignore", "The least populated class", UserWarning)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
      folds[held] = k
  return folds


def assign_splits(layout: str, examples, seed: int = 0) -> dict:
  """{id: split}: official splits as listed, derived ones carved from "train" by seed."""
  splits = {e.id: e.split for e in examples}
  for split, inverse_fraction in layout_spec(layout).derived:
    train = [e for e in examples if splits[e.id] == "train"]
    if len(train) < inverse_fraction:
      raise DatasetError(("(training set)", f"{len(train)} training images are too few to "
                          f"carve out a {split} split"))
    folds = _stratified_folds(train, inverse_fraction, seed)
    for e, fold in zip(train, folds):
      if fold == 0:
        splits[e.id] = split
  return splits


def assign_folds(examples, num_folds: int, seed: int = 0) -> dict:
  """{id: fold} for `examples` (normally the training split), stratified by label."""
  return {e.id: int(k) for e, k in zip(examples, _stratified_folds(examples, num_folds, seed))}


def read_records(layout: str, root: str, split: str, *, seed: int = 0,
                 splits: dict | None = None) -> Iterator[dict]:
  """Records of one split of the raw dataset at `root`, in id order.

  splits: optional {id: split} (e.g. from a prepared dataset's splits.json); by default
  `assign_splits(layout, examples, seed)`. Raises DatasetError listing every problem
  found by the listing step before yielding; decoding errors are raised per record.
  """
  if split not in schema.SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {schema.SPLITS}")
  examples, problems = list_examples(layout, root)
  if problems:
    raise DatasetError(problems, header=f"bad {layout} data in {root}")
  splits = splits or assign_splits(layout, examples, seed)
  for example in examples:
    if splits.get(example.id) == split:
      yield load_example(example, split)
