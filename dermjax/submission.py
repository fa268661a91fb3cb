"""ISIC challenge submission files: one CSV, header `image` + the task's class columns, one
row per image, float probabilities in [0, 1] (the format the official scorer,
PyPI isic-challenge-scoring, reads); ISIC 2016 Part 3 has no header row: two columns,
image id and malignancy confidence (the 2016 task page's "Test Results" format, read by
the 2016 scorer with fixed field names, so a header row would be scored as an image).

  isic2016   2016 Part 3 (lesion classification)         (no header) image id, malignant
  isic2017   2017 Part 3 (disease classification)        image, melanoma, seborrheic_keratosis
  isic2018   2018 Task 3 (7 diagnoses)                   image, MEL, NV, BCC, AKIEC, BKL, DF, VASC
  isic2019   2019 Task 1 (9 diagnoses incl. unknown)     image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK

A model's probabilities {class name: [N]} fill the columns of the same name; "melanoma",
"MEL" and "malignant" are one class (the melanoma score). A column the model does not
predict (e.g. seborrheic_keratosis for a melanoma-only model) is written as 0.0, with a
warning (once per process): the scorer then accepts the file, and that column's metrics
are those of a constant score.
"""

import csv
import io

import numpy as np
from absl import logging

from dermjax import fileio

FORMATS = {
    "isic2016": ("malignant",),
    "isic2017": ("melanoma", "seborrheic_keratosis"),
    "isic2018": ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
    "isic2019": ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"),
}
HEADERLESS = ("isic2016",)   # formats written without a header row
# data.layout -> its challenge's submission format.
LAYOUT_FORMATS = {"isic2016": "isic2016", "isic2017": "isic2017", "isic2018": "isic2018",
                  "isic2018_task3": "isic2018", "isic2019": "isic2019"}
MELANOMA_NAMES = ("melanoma", "MEL", "malignant")


def _canonical(name: str) -> str:
  return "melanoma" if name in MELANOMA_NAMES else name


def format_for(name: str, layout: str | None = None) -> str | None:
  """A format name, "auto" (the layout's, or None if it has none) or "" (None)."""
  if not name:
    return None
  if name == "auto":
    return LAYOUT_FORMATS.get(layout or "")
  if name not in FORMATS:
    raise ValueError(f"unknown submission format {name!r}; known: {sorted(FORMATS)} or 'auto'")
  return name


def class_probabilities(probs, class_names) -> dict:
  """Model probabilities -> {class name: [N]}: probs [N] (sigmoid score of class_names[1])
  or [N, K] (softmax over class_names)."""
  probs = np.asarray(probs, np.float64)
  if probs.ndim == 1:
    return {class_names[-1]: probs}
  if probs.shape[1] != len(class_names):
    raise ValueError(f"{probs.shape[1]} probabilities per image but {len(class_names)} class "
                     f"names {list(class_names)}")
  return {name: probs[:, k] for k, name in enumerate(class_names)}


def columns(fmt: str, probabilities: dict) -> dict:
  """{class name: [N]} -> {submission column: [N]} in the format's column order."""
  by_name = {_canonical(k): np.asarray(v, np.float64) for k, v in probabilities.items()}
  wanted = FORMATS[fmt]
  found = [c for c in wanted if _canonical(c) in by_name]
  if not found:
    raise ValueError(f"the model predicts {sorted(probabilities)}, none of the {fmt} columns "
                     f"{list(wanted)}")
  missing = [c for c in wanted if c not in found]
  if missing:
    logging.log_first_n(logging.WARNING, "%s submission: the model does not predict %s; "
                        "writing 0.0 there", 1, fmt, missing)
  size = len(next(iter(by_name.values())))
  return {c: np.clip(by_name[_canonical(c)], 0.0, 1.0) if c in found else np.zeros(size)
          for c in wanted}


def csv_text(ids, table: dict, *, header: bool = True) -> str:
  """ids [N] + {column: [N]} -> CSV text, one row per id, after a header `image`, <columns>
  (unless `header` is False)."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  if header:
    writer.writerow(["image", *table])
  values = [np.asarray(v, np.float64) for v in table.values()]
  for i, image_id in enumerate(ids):
    writer.writerow([str(image_id), *(repr(float(v[i])) for v in values)])
  return out.getvalue()


def write(path: str, fmt: str, ids, probs, class_names) -> str:
  """Writes the `fmt` submission CSV of model probabilities (see class_probabilities) to
  `path` atomically; returns path."""
  table = columns(fmt, class_probabilities(probs, class_names))
  fileio.write_text(path, csv_text(ids, table, header=fmt not in HEADERLESS))
  return path
