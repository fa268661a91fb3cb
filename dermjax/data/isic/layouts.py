"""The per-layout path table: where each ISIC year keeps its images, CSVs and masks."""

import dataclasses
import glob
import os

from dermjax.data import schema

LAYOUTS = ("isic2016", "isic2017", "isic2018", "isic2018_task3", "isic2019", "isic2020")

# Folder of evidence masks beside the official files (dermjax.data.synthetic writes it).
EVIDENCE_DIR = "dermjax_evidence"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Path conventions of one layout. Paths are globs relative to the dataset root, with
  `{s}` standing for the split's token in file names (e.g. "Training"); each field is a
  tuple of alternatives, the first that matches wins."""
  name: str
  classes: str                      # key into schema.CLASSES
  tokens: dict                      # official split -> file-name token
  derived: tuple = ()               # splits carved out of "train": (split, 1/fraction)
  optional: tuple = ()              # official splits read only where their label CSV is
                                    # (then not carved out of "train")
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
  duplicates: tuple = ()            # CSVs of duplicate image pairs, kept in one split (2020)


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
        "isic2019", "isic2019", {"train": "Training", "test": "Test"},
        derived=(("test", 5), ("validation", 8)), optional=("test",),
        images=("ISIC_2019_{s}_Input",),
        labels=("ISIC_2019_{s}_GroundTruth.csv",), label_format="isic2019",
        metadata=("ISIC_2019_{s}_Metadata.csv",), meta_format="isic2019"),
    "isic2020": Layout(
        "isic2020", "isic2020", {"train": "Training"},
        derived=(("test", 5), ("validation", 8)),
        images=("jpeg/train", "ISIC_2020_{s}_JPEG/train", "ISIC_2020_{s}_JPEG", "train"),
        labels=("train.csv", "ISIC_2020_{s}_GroundTruth*.csv"), label_format="isic2020",
        metadata=("train.csv", "ISIC_2020_{s}_GroundTruth*.csv"), meta_format="isic2020",
        duplicates=("ISIC_2020_{s}_Duplicates.csv",)),
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


def find(root, patterns, token):
  """First alternative with a match (the last match in sorted order), or None."""
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.join(glob.escape(root), pattern.replace("{s}", token))))
    if matches:
      return matches[-1]
  return None


def expected(root, patterns, token):
  return " or ".join(os.path.join(root, p.replace("{s}", token)) for p in patterns)
