"""Explanation faithfulness at evaluation: hard synthetic data -> prepare (evidence_mask in
the batch) -> a trained tiny model -> results/<split>.json "explanation"; and every paper's
saliency hook traced (shapes only) through the faithfulness computation."""

import json
import types

import jax
import numpy as np
import pytest

import tiny_model
import trained_run
from dermjax import config_lib
from dermjax import evaluate
from dermjax import evaluation
from dermjax import input_pipeline
from dermjax import models
from dermjax import train
from dermjax import steps
from dermjax.data import schema
from dermjax.metrics import faithfulness


def _tiny_hard_config(tmp_path):
  config = trained_run.get_config()
  config.data.synthetic_difficulty = "hard"
  config.data.synthetic_dir = str(tmp_path / "synthetic_hard")
  config.data.image_size = config.data.resize_size = 32
  config.data.synthetic_num_images = {"train": 8, "validation": 8, "test": 16}
  config.eval.explanation_deletion_steps = 4
  config.eval.explanation_deletion_images = 3
  config.eval.splits = ("test",)
  return config


def test_prepared_hard_batches_carry_evidence_inside_the_lesion(tmp_path):
  config = _tiny_hard_config(tmp_path)
  datasets = input_pipeline.create_datasets(config.data, mesh=steps.create_mesh(),
                                            workdir=str(tmp_path))
  assert evaluation.has_evidence(datasets)
  assert datasets.stats["splits"]["test"]["num_with_evidence"] == 16
  batch = jax.tree.map(np.asarray, next(iter(datasets.eval("test"))))
  assert batch["evidence_mask"].shape == (8, 32, 32)
  assert (batch["has_evidence_mask"] == 1).all() and batch["evidence_mask"].any()
  # Evidence and lesion are resized from the same packed codes: evidence within the lesion.
  assert not (batch["evidence_mask"].astype(bool) & (batch["masks"][..., 0] == 0)).any()


def test_no_explanation_without_evidence_masks():
  datasets = types.SimpleNamespace(stats={"splits": {"test": {"num_images": 3}}})
  assert not evaluation.has_evidence(datasets)
  assert evaluation.explanation_split(tiny_model, None, None, None, datasets, "test") is None


def test_trained_tiny_model_writes_explanation_results(tmp_path, monkeypatch):
  monkeypatch.setattr(tiny_model, "saliency", lambda outputs, batch, config: {
      "attention": outputs["attention"]}, raising=False)
  config = _tiny_hard_config(tmp_path)
  workdir = tmp_path / "run"
  with trained_run.registered():
    train.train_and_evaluate(config, str(workdir))
    with open(workdir / "results" / "test.json") as f:
      result = json.load(f)
    section = result["explanation"]
    assert section["num_images"] > 0 and section["deletion_steps"] == 4
    assert section["deletion_images"] == min(3, section["num_images"])
    entry = section["maps"]["attention"]
    for key in ("pointing_game", "pointing_chance", "energy_share", "energy_chance",
                "deletion_auc"):
      assert 0 <= entry[key] <= 1, (key, entry)
    assert 0 < entry["energy_chance"] < 0.5
    assert len(entry["deletion_curve"]) == 5 and len(section["random_deletion"]["deletion_curve"]) == 5
    # Both curves start from the model's score on the untouched images.
    assert entry["deletion_curve"][0] == pytest.approx(section["random_deletion"]["deletion_curve"][0])
    # The scalars also go to the run's summaries (TensorBoard and metrics.jsonl).
    with open(workdir / "tensorboard" / "metrics.jsonl") as f:
      logged = {k: v for line in f for k, v in json.loads(line).items()}
    for key in ("pointing_game", "energy_share", "deletion_auc"):
      assert logged[f"final_test/explanation/attention/{key}"] == pytest.approx(entry[key])
    assert logged["final_test/explanation/random_deletion/deletion_auc"] == pytest.approx(
        section["random_deletion"]["deletion_auc"])
    # dermjax.evaluate on the finished run writes the same section.
    again = evaluate.evaluate(str(workdir), str(tmp_path / "evaluate"), ["test"])
    rerun = again["test"]["explanation"]["maps"]["attention"]
    for key in ("pointing_game", "energy_share", "energy_chance", "deletion_auc"):
      assert rerun[key] == pytest.approx(entry[key], abs=1e-5), key


# Representative rows of every table with a spatial explanation -> the maps they return.
HOOK_ROWS = [
    ("gaze.py", "thesis", {"gaze0", "gaze_mean"}),
    ("attnmel.py", "attnmel", {"attention3", "attention4"}),
    ("attnmel.py", "vgg16_gap", {"cam"}),
    ("attnmel.py", "melcnn", set()),
    ("masll.py", "masll_resnet101", {"activation_map"}),
    ("masll.py", "resnet101", {"cam"}),
    ("cin.py", "A+F", {"q"}),
    ("zoome.py", "zoome", {"cam"}),
]


@pytest.mark.parametrize("table,row,names", HOOK_ROWS, ids=[f"{t[:-3]}:{r}" for t, r, _ in HOOK_ROWS])
def test_saliency_hooks_trace_through_the_faithfulness_metrics(table, row, names):
  config = config_lib.load_config(f"{trained_run.TESTS_DIR}/../configs/{table}", row)
  config.data.image_size = config.data.resize_size = 32
  if config.data.augment.get("crop_size") is not None:
    config.data.augment.crop_size = None
  model_lib = models.get(config.model.name)
  module = model_lib.build(config)
  spec = schema.batch_spec(32, 2)
  shapes = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
  mean = std = np.ones(3, np.float32)

  def run(host_batch):
    batch = steps.preprocess(host_batch, jax.random.key(0), config, mean, std, train=False)
    variables = module.init({"params": jax.random.key(1), "dropout": jax.random.key(2),
                             "sample": jax.random.key(3)}, batch, train=False)
    apply = lambda b: module.apply(variables, b, train=False)
    outputs = apply(batch)
    maps = model_lib.saliency(outputs, batch, config)
    score = lambda images: evaluation.positive_score(apply({**batch, "image": images})["logits"])
    return maps, faithfulness.batch_metrics(maps, batch, score, steps=2)

  maps, metrics = jax.eval_shape(run, shapes)
  assert set(maps) >= names and (names or not maps)
  for name, m in maps.items():
    assert len(m.shape) == 3 and m.shape[0] == 2, (name, m.shape)
    assert metrics[f"{name}/pointing"].shape == (2,)
    assert metrics[f"{name}/deletion"].shape == (2, 3)


def test_deletion_reaches_the_source_copy():
  """Deletion curves change the model input; a source_image (MASLL crop_source "source")
  gets the same change at its resolution, and is untouched where the input is."""
  rng = np.random.default_rng(0)
  image = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
  source = rng.normal(size=(1, 16, 16, 3)).astype(np.float32)
  batch = {"image": image, "source_image": source, "valid": np.ones(1, np.float32)}
  same = evaluation.with_images(batch, image)
  np.testing.assert_allclose(same["source_image"], source, atol=1e-6)
  deleted = image.copy()
  deleted[:, :4, :4] = 0.0                   # the top-left quarter painted over
  out = evaluation.with_images(batch, deleted)
  assert out["image"] is deleted and out["valid"] is batch["valid"]
  changed = np.abs(np.asarray(out["source_image"]) - source).max(-1)[0] > 1e-6
  assert changed[:6, :6].all() and not changed[10:, :].any() and not changed[:, 10:].any()
  assert "source_image" not in evaluation.with_images({"image": image}, deleted)
