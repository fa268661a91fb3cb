"""Readers for the official ISIC on-disk layouts (2016-2020), from a local directory.

One table (layouts.py) holds every year's path conventions; the code that reads them is
shared. Reading is two steps so that `prepare` can check a whole dataset in one pass:

  list_examples(layout, root) -> (examples, problems)   CSVs and file names only
  load_example(example)       -> record                  decodes and checks one image

`read_records(layout, root, split)` chains both and yields records (see schema.py). This
package's parts, each one idea; their public names are all importable from here:

  layouts.py      the per-layout path table (`Layout`, `layout_spec`, `classes`)
  csv_formats.py  label / metadata CSV columns, row parsers, `read_csv`
  listing.py      `Example`, `list_examples` (CSVs + file names, every problem in one list)
  decode.py       `load_example` and the image / mask / superpixel / features readers
  splits.py       `assign_splits` (derived validation / test), `assign_folds` (k-fold CV),
                  `groups` (lesion / patient / duplicate groups), PROTOCOLS

Layouts (`LAYOUTS`):
  isic2016        ISBI 2016 Part 3 labels (benign/malignant), Part 1 lesion masks.
  isic2017        Part 1 masks, Part 2 superpixel attributes, Part 3 labels, metadata.
  isic2018        Task 1-2 images with Task 1 lesion masks and Task 2 attribute masks
                  (five, incl. globules); Task 3 labels are merged in for the ids that
                  have them (on the official data Task 1-2 and Task 3 are different
                  images, so most records there have label -1).
  isic2018_task3  Task 3 classification (7 classes), no masks.
  isic2019        training set with metadata (lesion_id); the official test set
                  (`ISIC_2019_Test_Input/`, `ISIC_2019_Test_GroundTruth.csv`, published
                  since the challenge, and `ISIC_2019_Test_Metadata.csv`) where its ground
                  truth CSV is present: it is then the test split, else one is carved.
  isic2020        training set only; Kaggle `train.csv` + `jpeg/train/` or the ISIC-hosted
                  `ISIC_2020_Training_GroundTruth*.csv` + `ISIC_2020_Training_JPEG/train/`
                  (or `train/`, where ISIC_2020_Training_JPEG.zip is unzipped in place);
                  `ISIC_2020_Training_Duplicates.csv` (image_name_1, image_name_2) where
                  present: each pair is kept in one split and one fold (both images stay,
                  so the set keeps its 33,126 images as the papers count them).

Splits: official splits are read from their own directories; `validation` (2016, 2019,
2020) and `test` (2019 without its official test, 2020) are carved out of the official
training set by `assign_splits` (stratified by label; images of one lesion, one patient
or a duplicate pair stay together; from a seed; the fractions and the protocol are
settings: splits.py, config.data.validation_fraction / protocol).

Mask sources are optional as a whole: when a mask directory (or a features directory)
is absent, records have `has_lesion_mask`/`has_attributes` False; when it is present,
every image must have its file. Label CSVs are required where the layout has labels.
Evidence masks (dermjax's synthetic `hard` preset only, never an official file): when
`<root>/dermjax_evidence/` exists, every image must have `<id>_evidence.png` there (the
pixels whose content decides the label); records then carry it as `evidence_mask`.
Where a glob names several files (e.g. GroundTruth.csv and GroundTruth_v2.csv), the
last in sorted order (the newest version) is used.
"""


from typing import Iterator

from dermjax.data import schema
from dermjax.data.errors import DatasetError
from dermjax.data.isic.csv_formats import LABEL_FORMATS, META_FORMATS, CsvFormat, read_csv
from dermjax.data.isic.decode import (ATTRIBUTES_2017, load_example, read_image, read_mask,
                                      read_superpixels, superpixel_attributes)
from dermjax.data.isic.layouts import (EVIDENCE_DIR, LAYOUTS, Layout, classes, layout_spec,
                                       official_splits)
from dermjax.data.isic.listing import Example, list_examples
from dermjax.data.isic.splits import (PROTOCOLS, assign_folds, assign_splits, derived_splits,
                                      groups, split_settings, stratum)

__all__ = ["ATTRIBUTES_2017", "EVIDENCE_DIR", "LABEL_FORMATS", "LAYOUTS", "META_FORMATS",
           "PROTOCOLS", "CsvFormat", "Example", "Layout", "assign_folds", "assign_splits",
           "classes", "derived_splits", "groups", "layout_spec", "list_examples",
           "load_example", "official_splits", "read_csv", "read_image", "read_mask",
           "read_records", "read_superpixels", "split_settings", "stratum",
           "superpixel_attributes"]


def read_records(layout: str, root: str, split: str, *, seed: int = 0,
                 splits: dict | None = None, **settings) -> Iterator[dict]:
  """Records of one split of the raw dataset at `root`, in id order.

  splits: optional {id: split} (e.g. from a prepared dataset's splits.json); by default
  `assign_splits(layout, examples, seed, **settings)` (validation_fraction, protocol).
  Raises DatasetError listing every problem found by the listing step before yielding;
  decoding errors are raised per record.
  """
  if split not in schema.SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {schema.SPLITS}")
  examples, problems = list_examples(layout, root)
  if problems:
    raise DatasetError(problems, header=f"bad {layout} data in {root}")
  splits = splits or assign_splits(layout, examples, seed, **settings)
  for example in examples:
    if splits.get(example.id) == split:
      yield load_example(example, split)
