"""Derived splits and cross-validation folds of a layout's examples."""

import warnings

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from dermjax.data.errors import DatasetError
from dermjax.data.isic import layouts


def stratum(example) -> int:
  """The label splits are stratified by: the class index, else melanoma, else 0."""
  return example.label if example.label >= 0 else max(example.melanoma, 0)


def _stratified_folds(examples, num_folds, seed):
  """Fold index per example, stratified by `stratum`, grouped by patient where known.

  When no class has num_folds members (tiny sets), folds are grouped but not stratified.
  """
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
  for split, inverse_fraction in layouts.layout_spec(layout).derived:
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
