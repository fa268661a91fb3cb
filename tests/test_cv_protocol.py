"""data.protocol = "cv": folds over the whole training set, fold k tested, fold k + 1 the
validation split that picks the checkpoint and the thresholds, the rest trained; dermjax.cv
reports the held-out folds' mean ± std. The tables' split settings (ZooME, CIN)."""

import collections
import json
import os

import numpy as np
import pytest

import trained_run
from dermjax import config_lib
from dermjax import cv
from dermjax import input_pipeline
from dermjax import steps
from dermjax.metrics import diagnosis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDS = 3


def test_fold_roles_partition_the_set_and_test_every_image_once():
  ids = [f"ISIC_{i:07d}" for i in range(30)]
  split_file = {"num_folds": 5, "folds": {i: n % 5 for n, i in enumerate(ids)}}
  tested = collections.Counter()
  for k in range(5):
    roles = input_pipeline.fold_roles(split_file, ids, k, "cv")
    parts = {s: {ids[p] for p in rows} for s, rows in roles.items()}
    assert parts["test"] == {i for i in ids if split_file["folds"][i] == k}
    assert parts["validation"] == {i for i in ids if split_file["folds"][i] == (k + 1) % 5}
    assert sum(len(p) for p in parts.values()) == 30 and set().union(*parts.values()) == set(ids)
    tested.update(parts["test"])
  assert tested == collections.Counter(ids)
  carved = input_pipeline.fold_roles(split_file, ids, 2)
  assert sorted(carved) == ["train", "validation"] and len(carved["validation"]) == 6
  with pytest.raises(ValueError, match="num_folds >= 3"):
    input_pipeline.fold_roles({"num_folds": 2, "folds": {i: 0 for i in ids}}, ids, 0, "cv")
  with pytest.raises(ValueError, match="data.fold = 5"):
    input_pipeline.fold_roles(split_file, ids, 5, "cv")


def test_the_tables_declare_their_split_settings():
  load = lambda table, arg: config_lib.load_config(os.path.join(REPO, "configs", table), arg)
  assert load("zoome.py", "zoome,paper").data.protocol == "cv"
  assert load("zoome.py", "zoome,paper").data.num_folds == 10
  assert load("zoome.py", "zoome").data.protocol == "carved_test"
  assert load("cin.py", "cin,isic2016,paper").data.validation_fraction == 0.2
  assert load("cin.py", "lesion_attention,isic2016").data.validation_fraction == 0.2
  assert load("cin.py", "cin,paper").data.validation_fraction is None      # ISIC 2017's own
  assert load("attnmel.py", "attnmel,isic2016").data.validation_fraction is None


def test_cv_without_a_fold_stops_before_any_data_work(tmp_path):
  config = trained_run.get_config()
  config.data.protocol = "cv"
  with pytest.raises(ValueError, match="needs data.fold"):
    input_pipeline.create_datasets(config.data, mesh=steps.create_mesh(), workdir=str(tmp_path))
  assert not os.listdir(tmp_path)


def test_cross_validation_tests_each_fold_once_with_validation_thresholds(tmp_path_factory,
                                                                         tmp_path):
  config = trained_run.get_config()
  config.data.protocol, config.data.layout = "cv", "isic2020"   # ZooME's setting, tiny
  config.data.synthetic_num_images = {"train": 24, "validation": 0, "test": 0}
  config.eval.num_visualizations = 0
  with trained_run.registered():
    summary = cv.cross_validate(config, str(tmp_path), folds=FOLDS)
  assert summary["folds_finished"] == FOLDS and summary["held_out"] == "test"
  with open(tmp_path / "synthetic_isic2020" / "prepared" / "isic2020" / "splits.json") as f:
    split_file = json.load(f)
  assert split_file["settings"] == {"protocol": "cv", "derived": {}}
  fold_of = split_file["folds"]
  assert len(fold_of) == 24   # every training image is in a fold
  tested = []
  for k in range(FOLDS):
    run = tmp_path / f"fold_{k}"
    ids = {s: list(np.load(run / "predictions" / f"{s}.npz")["ids"])
           for s in ("validation", "test")}
    assert {fold_of[i] for i in ids["test"]} == {k}
    assert {fold_of[i] for i in ids["validation"]} == {(k + 1) % FOLDS}
    tested += ids["test"]
    validation = json.loads((run / "results" / "validation.json").read_text())
    test = json.loads((run / "results" / "test.json").read_text())
    chosen = {r: t for r, t in validation["thresholds"].items() if t is not None}
    assert chosen and set(test[diagnosis.AT_VALIDATION]) == set(chosen)
    for rule, t in chosen.items():
      assert test[diagnosis.AT_VALIDATION][rule]["threshold"] == pytest.approx(t)
  assert sorted(tested) == sorted(fold_of)   # each image tested once, by a model that did not
  name = f"test/{diagnosis.AT_VALIDATION}/youden/sensitivity"   # train or choose on it
  assert name in summary["mean"] and name in (tmp_path / "summary.md").read_text()
  assert "held-out fold is each run's `test` split" in (tmp_path / "summary.md").read_text()
