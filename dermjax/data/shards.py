"""Integrity of a prepared dataset: its array_record shards against the dataset's own record.

TFDS's dataset_info.json lists each split's shard files and the records in each; a shard's
footer gives its record count without reading the records (milliseconds per shard). A
deleted or truncated shard would otherwise surface as a raw array_record error mid-run.
"""

import os

import tensorflow_datasets as tfds
from array_record.python import array_record_module

from dermjax.data.errors import DatasetError


def _first_line(error) -> str:
  return (str(error).splitlines() or [type(error).__name__])[0][:200]


def problems(builder_dir: str) -> list:
  """[(file, problem)] of the TFDS dataset in `builder_dir`: every shard its
  dataset_info.json lists must exist and its footer must count the records listed there.
  Empty when the dataset is whole."""
  try:
    splits = tfds.builder_from_directory(builder_dir).info.splits
  except Exception as e:  # pylint: disable=broad-except  (missing or unreadable dataset_info)
    return [(builder_dir, f"unreadable TFDS dataset info ({_first_line(e)})")]
  found = []
  for split in splits.values():
    for file, expected in zip(split.filepaths, split.shard_lengths):
      file = str(file)
      if not os.path.isfile(file):
        found.append((file, "missing"))
        continue
      try:
        reader = array_record_module.ArrayRecordReader(file)
        count = reader.num_records()
        reader.close()
      except Exception as e:  # pylint: disable=broad-except  (riegeli: a bad footer)
        found.append((file, f"damaged ({_first_line(e)})"))
        continue
      if count != expected:
        found.append((file, f"holds {count} records where {expected} were written"))
  return found


def damaged(path: str, found: list, way_out: str) -> DatasetError:
  """One DatasetError line for the damaged dataset at `path`: its first bad file, how many
  more, and `way_out`."""
  file, what = found[0]
  more = f" (and {len(found) - 1} more file(s))" if len(found) > 1 else ""
  return DatasetError([(file, f"{what}{more}; {way_out}")],
                      header=f"the prepared dataset {path} is damaged")
