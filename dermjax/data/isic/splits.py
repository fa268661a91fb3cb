"""Derived splits and cross-validation folds of a layout's examples.

Groups: images that share a lesion (`lesion_id`), a patient (`patient_id`) or are listed as
duplicates of each other (ISIC 2020's Duplicates CSV) are one group (the connected
components of those links); an image with none of them is a group of its own. A group is
never divided between splits or folds: lesion first (ISIC 2019 has lesion ids only), then
patient (ISIC 2020), then image.

Protocols (config.data.protocol, PROTOCOLS):
  "carved_test"  the layout's derived splits (Layout.derived): ISIC 2019 / 2020 carve a
                 test split (1/5) where no official one is present, then a validation
                 split (1/8 of the rest, or data.validation_fraction); ISIC 2016 carves
                 validation only. Folds cover what stays in "train".
  "cv"           nothing is carved: the folds cover the whole official training split
                 (dermjax.input_pipeline makes fold k the test split).
"""

import math
import warnings

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from dermjax.data.errors import DatasetError
from dermjax.data.isic import layouts

PROTOCOLS = ("carved_test", "cv")


def stratum(example) -> int:
  """The label splits are stratified by: the class index, else melanoma, else 0."""
  return example.label if example.label >= 0 else max(example.melanoma, 0)


def groups(examples) -> np.ndarray:
  """int [N]: the group of each example (connected components over shared lesion ids,
  patient ids and duplicate pairs; see the module docstring)."""
  index = {e.id: n for n, e in enumerate(examples)}
  keys = {}
  rows, cols = [], []
  for n, e in enumerate(examples):
    links = [("lesion", e.lesion_id), ("patient", e.patient_id)]
    for kind, key in links:
      if key:
        rows.append(n)
        cols.append(len(examples) + keys.setdefault((kind, key), len(keys)))
    for other in e.duplicates:
      if other in index:
        rows.append(n)
        cols.append(index[other])
  size = len(examples) + len(keys)
  graph = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
  _, labels = csgraph.connected_components(graph, directed=False)
  return labels[:len(examples)]


def _stratified_folds(examples, num_folds, seed):
  """Fold index per example, stratified by `stratum`, grouped by `groups`.

  When no class has num_folds members (tiny sets), folds are grouped but not stratified.
  """
  y = np.array([stratum(e) for e in examples])
  group = groups(examples)
  num_groups = len(np.unique(group))
  if num_groups < num_folds:
    raise DatasetError(("(training set)", f"{num_groups} images/lesions/patients are too few "
                        f"for {num_folds} folds"))
  folds = np.zeros(len(examples), np.int32)
  if np.unique(y, return_counts=True)[1].max() >= num_folds:
    splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  else:
    splitter = GroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  with warnings.catch_warnings():  # rare classes with fewer members than folds are fine
    warnings.filterwarnings("ignore", "The least populated class", UserWarning)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y, group)):
      folds[held] = k
  return folds


def derived_splits(layout: str, *, validation_fraction=None, protocol="carved_test") -> tuple:
  """((split, k), ...): each derived split is fold 0 of k grouped stratified folds of what
  is left in "train", in order. validation_fraction (None: the layout's) must be 1/k for
  an integer k >= 2 (0.2, 0.125, ...). Raises ValueError for a setting that cannot apply."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"data.protocol must be one of {PROTOCOLS}, got {protocol!r}")
  derived = layouts.layout_spec(layout).derived
  if validation_fraction is None:
    return derived if protocol == "carved_test" else ()
  if protocol != "carved_test":
    raise ValueError(f"data.validation_fraction = {validation_fraction} applies to data.protocol "
                     "'carved_test' only (under 'cv' the validation split is a fold)")
  if "validation" not in dict(derived):
    raise ValueError(f"data.validation_fraction = {validation_fraction}, but {layout} has an "
                     "official validation split (nothing is carved); leave it None")
  k = round(1 / validation_fraction) if 0 < validation_fraction < 1 else 0
  if k < 2 or not math.isclose(1 / k, validation_fraction, rel_tol=1e-6):
    raise ValueError(f"data.validation_fraction must be 1/k for an integer k >= 2 (0.5, 0.2, "
                     f"0.125, ...), got {validation_fraction}")
  return tuple((s, k if s == "validation" else n) for s, n in derived)


def split_settings(layout: str, *, validation_fraction=None, protocol="carved_test") -> dict:
  """The split settings a prepared dataset records: {"protocol", "derived": {split: fraction}}."""
  derived = derived_splits(layout, validation_fraction=validation_fraction, protocol=protocol)
  return {"protocol": protocol, "derived": {s: 1 / k for s, k in derived}}


def assign_splits(layout: str, examples, seed: int = 0, *, validation_fraction=None,
                  protocol="carved_test") -> dict:
  """{id: split}: official splits as listed, derived ones carved from "train" by seed
  (derived_splits; a split the layout has officially, e.g. ISIC 2019's test where its
  ground truth is present, is not carved)."""
  splits = {e.id: e.split for e in examples}
  official = set(splits.values())
  for split, inverse_fraction in derived_splits(layout, validation_fraction=validation_fraction,
                                                protocol=protocol):
    if split in official:
      continue
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
  """{id: fold} for `examples` (normally the training split), stratified by label and
  grouped (`groups`)."""
  return {e.id: int(k) for e, k in zip(examples, _stratified_folds(examples, num_folds, seed))}
