"""Listing a layout's examples from its CSVs and file names (no decoding)."""

import dataclasses
import math
import os

from dermjax.data import schema
from dermjax.data.isic import csv_formats
from dermjax.data.isic import layouts


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
  lesion_id: str = ""               # images of one lesion (ISIC 2019 / 2020 metadata)
  duplicates: tuple = ()            # ids of images listed as its duplicates (ISIC 2020)


def _list_split(spec: layouts.Layout, root, split, merged, problems):
  token = spec.tokens[split]
  if split in spec.optional and layouts.find(root, spec.labels, token) is None:
    return []  # e.g. ISIC 2019's test split before its ground truth was published
  image_dir = layouts.find(root, spec.images, token)
  if image_dir is None or not os.path.isdir(image_dir):
    problems.append((layouts.expected(root, spec.images, token), "missing image directory"))
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
    path = layouts.find(root, spec.labels, token)
    if path is None:
      problems.append((layouts.expected(root, spec.labels, token), "missing label CSV"))
      return []
    labels = csv_formats.read_csv(path, csv_formats.LABEL_FORMATS[spec.label_format], problems)
    csv_formats.unmatched(path, labels.keys() - examples.keys(), problems)
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
    path = layouts.find(root, spec.metadata, token)
    if path is not None:
      meta = csv_formats.read_csv(path, csv_formats.META_FORMATS[spec.meta_format], problems)
      csv_formats.unmatched(path, meta.keys() - examples.keys(), problems)
      for i, values in meta.items():
        if i in examples and values:
          e = examples[i]
          e.age, e.sex, e.site, e.patient_id, e.lesion_id = values

  def require(path, what, example_id):
    if os.path.exists(path):
      return path
    problems.append((path, f"missing {what} for {example_id}"))
    broken.add(example_id)
    return None

  broken = set()
  mask_dir = layouts.find(root, spec.lesion_masks, token) if spec.lesion_masks else None
  feature_dir = layouts.find(root, spec.features, token) if spec.features else None
  attribute_dir = layouts.find(root, spec.attribute_masks, token) if spec.attribute_masks else None
  evidence_dir = os.path.join(root, layouts.EVIDENCE_DIR)
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
  spec = layouts.layout_spec(layout)
  problems = []
  if not os.path.isdir(root):
    return [], [(root, "dataset directory does not exist")]
  merged = {}
  for pattern in spec.merged_labels:
    path = layouts.find(root, (pattern,), "")
    if path:
      merged.update(csv_formats.read_csv(path, csv_formats.LABEL_FORMATS[spec.merged_format], problems))
  examples = []
  for split in spec.tokens:
    examples += _list_split(spec, root, split, merged, problems)
  _mark_duplicates(spec, root, examples, problems)
  return examples, list(dict.fromkeys(problems))  # 2020 reads one CSV twice


def _mark_duplicates(spec, root, examples, problems):
  """Sets Example.duplicates from the layout's duplicate-pair CSVs, where present."""
  by_id = {e.id: e for e in examples}
  for pattern in spec.duplicates:
    path = layouts.find(root, (pattern,), spec.tokens["train"])
    if path is None:
      continue
    pairs = csv_formats.read_pairs(path, csv_formats.DUPLICATES_COLUMNS, problems)
    csv_formats.unmatched(path, {i for pair in pairs for i in pair} - by_id.keys(), problems)
    for a, b in pairs:
      if a in by_id and b in by_id:
        by_id[a].duplicates += (b,)
        by_id[b].duplicates += (a,)
