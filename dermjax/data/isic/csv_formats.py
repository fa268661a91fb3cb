"""The label and metadata CSVs of the ISIC layouts: their columns, row parsers, and reading.

`read_csv(path, fmt, problems)` -> {id: parsed values}; every bad row is named by its line
and its id (a short row too: its first field) in `problems`, so a whole dataset is checked
in one pass.

Metadata rows parse to (age, sex, site, patient_id, lesion_id); lesion_id is the optional
`lesion_id` column of ISIC 2019's Training_Metadata.csv (its Test_Metadata.csv has none)
and of ISIC 2020's ISIC-hosted CSVs ("" where absent): the splits keep a lesion's images
together. ISIC 2020's ISIC_2020_Training_Duplicates.csv (image_name_1, image_name_2) lists
pairs of duplicate images (`read_pairs`).
"""

import csv
import dataclasses
import math
from typing import Callable

from dermjax.data import schema


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


def _meta(age=None, sex=None, site=None, patient=None, lesion=None):
  """Row parser -> (age, sex, site, patient_id, lesion_id) from the named columns (`lesion`
  optional: "" where the CSV has no such column)."""
  def parse(row):
    return (_age(row[age]) if age else math.nan, _sex(row[sex]) if sex else -1,
            _site(row[site]) if site else -1, row[patient].strip() if patient else "",
            (row.get(lesion) or "").strip() if lesion else "")
  return parse


META_FORMATS = {
    "isic2017": CsvFormat("image_id", ("image_id", "age_approximate", "sex"),
                          _meta("age_approximate", "sex")),
    "isic2019": CsvFormat("image", ("image", "age_approx", "anatom_site_general", "sex"),
                          _meta("age_approx", "sex", "anatom_site_general", lesion="lesion_id")),
    "isic2020": CsvFormat("image_name", ("image_name", "patient_id", "sex", "age_approx",
                                         "anatom_site_general_challenge"),
                          _meta("age_approx", "sex", "anatom_site_general_challenge",
                                "patient_id", "lesion_id")),
}

DUPLICATES_COLUMNS = ("image_name_1", "image_name_2")   # ISIC_2020_Training_Duplicates.csv


def _rows(path, columns, fieldnames, problems):
  """CSV -> (row dicts, number of the first data line), or None after naming the problem."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f, fieldnames=fieldnames)
      rows = list(reader)
      header = reader.fieldnames or []
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    problems.append((path, f"cannot read CSV: {e}"))
    return None
  missing = [c for c in columns if c not in header]
  if missing:
    problems.append((path, f"missing column(s) {missing}; found {list(header)}"))
    return None
  return rows, 1 if fieldnames else 2


def _report(path, bad, problems):
  if bad:
    problems.append((path, f"{len(bad)} bad row(s): " + "; ".join(bad[:5])))


def read_csv(path, fmt: CsvFormat, problems):
  """CSV -> {id: parsed values, None for a bad row}; problems are added to `problems`."""
  read = _rows(path, fmt.columns, fmt.fieldnames, problems)
  if read is None:
    return {}
  out, bad = {}, []
  for line, row in enumerate(read[0], start=read[1]):
    row_id = (row.get(fmt.id_column) or "").strip()
    named = f"line {line}: {row_id or '(no id)'}"
    if any(row.get(c) is None for c in fmt.columns):
      bad.append(f"{named}: too few fields")
      continue
    try:
      out[row_id] = fmt.parse(row)
    except ValueError as e:
      out[row_id] = None
      bad.append(f"{named}: {e}")
  _report(path, bad, problems)
  return out


def read_pairs(path, columns, problems) -> list:
  """A two-column id CSV (e.g. DUPLICATES_COLUMNS) -> [(id_1, id_2)]; short or empty rows
  are named in `problems`."""
  read = _rows(path, columns, None, problems)
  if read is None:
    return []
  pairs, bad = [], []
  for line, row in enumerate(read[0], start=read[1]):
    pair = tuple((row.get(c) or "").strip() for c in columns)
    if not all(pair):
      bad.append(f"line {line}: {pair[0] or '(no id)'}: too few fields")
    else:
      pairs.append(pair)
  _report(path, bad, problems)
  return pairs


def unmatched(path, ids, problems):
  if ids:
    ids = sorted(ids)
    problems.append((path, f"{len(ids)} id(s) match no image: {', '.join(ids[:10])}"
                     + (" ..." if len(ids) > 10 else "")))
