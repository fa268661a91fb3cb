"""dermjax.predict and dermjax.evaluate on a tiny finished run; test-time augmentation."""

import csv
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import trained_run
from dermjax import config_lib
from dermjax import predict
from dermjax import runs
from dermjax import tta as tta_lib


@pytest.fixture
def run(tmp_path_factory):
  with trained_run.registered():
    yield trained_run.tiny_run(tmp_path_factory)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_folder_of_odd_images_and_a_truncated_jpeg(run, tmp_path):
  folder = tmp_path / "images"
  (folder / "sub").mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate([(40, 60), (90, 30), (17, 17), (64, 200), (33, 48)]):
    image = Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8))
    image.save(folder / ("sub" if i == 4 else "") / f"img{i}.{'png' if i % 2 else 'jpg'}")
  Image.fromarray(rng.integers(0, 255, (80, 80, 3), np.uint8)).save(tmp_path / "full.jpg")
  data = (tmp_path / "full.jpg").read_bytes()
  (folder / "broken.jpg").write_bytes(data[:len(data) // 2])
  (folder / "notes.txt").write_text("not an image")  # skipped: not a JPEG/PNG name

  out = tmp_path / "out"
  result = predict.predict(run, [str(folder)], str(out), fmt="isic2017")

  rows = _rows(out / "predictions.csv")
  assert [r["image"] for r in rows] == [f"img{i}" for i in range(5)]
  assert all(0.0 <= float(r["melanoma"]) <= 1.0 for r in rows)
  errors = _rows(out / "errors.csv")
  assert len(errors) == 1 and errors[0]["image"].endswith("broken.jpg")
  assert "truncated" in errors[0]["error"]
  explained = {name.split(".")[0] for name in os.listdir(out / "explanations")}
  assert explained == {f"img{i}" for i in range(5)}
  sub = _rows(out / "submission_isic2017.csv")
  assert list(sub[0]) == ["image", "melanoma", "seborrheic_keratosis"] and len(sub) == 5
  assert result["probabilities"]["melanoma"].shape == (5,)


def test_predict_uses_the_runs_preprocessing(run, tmp_path):
  """On the run's own test images, predict gives the scores the end of training saved."""
  config = config_lib.load_run_config(run)
  images = os.path.join(config.data.synthetic_dir, "ISIC-2017_Test_v2_Data")
  result = predict.predict(run, [images], str(tmp_path), batch_size=3, explain=False)
  saved = np.load(os.path.join(run, "predictions", "test.npz"))
  assert sorted(result["ids"]) == sorted(saved["ids"])  # (ISIC's *_superpixels.png skipped)
  by_id = dict(zip(result["ids"], result["probabilities"]["melanoma"]))
  np.testing.assert_allclose([by_id[i] for i in saved["ids"]], saved["scores"], rtol=1e-5,
                             atol=1e-6)


def test_evaluate_reproduces_the_runs_results(run, tmp_path):
  from dermjax import evaluate
  evaluate.evaluate(run, str(tmp_path), splits=["test"])
  with open(os.path.join(run, "results", "test.json")) as f:
    expected = json.load(f)
  with open(tmp_path / "results" / "test.json") as f:
    assert json.load(f) == expected
  assert os.listdir(tmp_path / "explanations" / "test")
  assert (tmp_path / "predictions" / "test_isic2017.csv").exists()


def test_predict_and_evaluate_follow_the_runs_normalization(tmp_path_factory, tmp_path):
  """A run trained with ImageNet normalisation records it (results/normalization.json: mode,
  mean, std); predict and evaluate normalise the same way and reproduce its test scores.
  A record without a mode (older runs) loads as "dataset": its scores then differ, so the
  check can tell the two apart."""
  from dermjax import evaluate
  from dermjax.data import normalization
  with trained_run.registered():
    run = trained_run.tiny_run(tmp_path_factory, normalization="imagenet")
    with open(os.path.join(run, "results", "normalization.json")) as f:
      record = json.load(f)
    assert record["mode"] == "imagenet"
    np.testing.assert_allclose(record["mean"], np.multiply(normalization.IMAGENET_MEAN, 255),
                               rtol=1e-6)
    np.testing.assert_allclose(record["std"], np.multiply(normalization.IMAGENET_STD, 255),
                               rtol=1e-6)
    assert runs.load_run(run).normalization == "imagenet"
    config = config_lib.load_run_config(run)
    images = os.path.join(config.data.synthetic_dir, "ISIC-2017_Test_v2_Data")
    saved = np.load(os.path.join(run, "predictions", "test.npz"))

    def scores(workdir, out):
      result = predict.predict(workdir, [images], str(tmp_path / out), explain=False)
      by_id = dict(zip(result["ids"], result["probabilities"]["melanoma"]))
      return np.array([by_id[i] for i in saved["ids"]])

    np.testing.assert_allclose(scores(run, "predict"), saved["scores"], rtol=1e-5, atol=1e-6)
    evaluate.evaluate(run, str(tmp_path / "evaluate"), splits=["test"])
    with open(os.path.join(run, "results", "test.json")) as f:
      expected = json.load(f)
    with open(tmp_path / "evaluate" / "results" / "test.json") as f:
      assert json.load(f) == expected
    with open(tmp_path / "evaluate" / "results" / "normalization.json") as f:
      assert json.load(f)["mode"] == "imagenet"

    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    (old / "results" / "normalization.json").unlink()     # runs from before the record:
    assert runs.load_run(str(old)).normalization == "imagenet"   # config.json's choice
    config.data.normalization = "dataset"
    stats = runs.normalization(str(old), config)    # stats.json of the run's data
    del record["mode"]
    record.update(mean=stats["mean"].tolist(), std=stats["std"].tolist())
    (old / "results" / "normalization.json").write_text(json.dumps(record))
    assert runs.load_run(str(old)).normalization == "dataset"
    assert np.abs(scores(str(old), "old") - saved["scores"]).max() > 1e-4


def test_run_config_round_trips_for_the_tables():
  for table in ("gaze", "attnmel"):
    config = config_lib.load_config(f"configs/{table}.py")
    loaded = config_lib.config_from_json(config.to_json_best_effort())
    assert loaded.to_dict() == config.to_dict(), table
    with pytest.raises(TypeError):
      loaded.data.dir = 3  # still a str-typed field


class _Pool(nn.Module):
  """Logits from the mean colour (flip-invariant) or from one corner pixel (not invariant)."""
  invariant: bool

  @nn.compact
  def __call__(self, batch, train=False):
    x = batch["image"]
    feature = jnp.mean(x, (1, 2)) if self.invariant else x[:, 0, 1] + 0.3 * x[:, 2, 0]
    return {"logits": nn.Dense(1)(feature), "image_mean": jnp.mean(x, (1, 2, 3))}


@pytest.mark.parametrize("invariant", [True, False])
def test_tta_is_the_mean_over_the_dihedral_group(invariant):
  rng = np.random.default_rng(1)
  batch = {"image": jnp.asarray(rng.normal(size=(3, 5, 5, 3)), jnp.float32),
           "masks": jnp.zeros((3, 5, 5, 6), jnp.float32)}
  module = _Pool(invariant)
  variables = module.init(jax.random.key(0), batch)
  plain = jax.nn.sigmoid(module.apply(variables, batch)["logits"])
  tta = jax.jit(lambda v, b: tta_lib.TTAModule(module, 8).apply(v, b))(variables, batch)
  # Brute force: the 8 flips/transposes in numpy, probabilities averaged.
  views = []
  for transpose in (False, True):
    image = np.swapaxes(np.asarray(batch["image"]), 1, 2) if transpose else np.asarray(batch["image"])
    for flip_v in (False, True):
      for flip_h in (False, True):
        view = image[:, ::-1] if flip_v else image
        views.append(view[:, :, ::-1] if flip_h else view)
  assert len({v.tobytes() for v in views}) == 8
  expected = np.mean([jax.nn.sigmoid(module.apply(variables, {**batch, "image": jnp.asarray(v)})
                                     ["logits"]) for v in views], 0)
  np.testing.assert_allclose(jax.nn.sigmoid(tta["logits"]), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(tta["image_mean"], module.apply(variables, batch)["image_mean"])
  if invariant:
    np.testing.assert_allclose(jax.nn.sigmoid(tta["logits"]), plain, rtol=1e-5, atol=1e-6)
  else:
    assert np.abs(np.asarray(jax.nn.sigmoid(tta["logits"]) - plain)).max() > 1e-3


class _SourceCorner(nn.Module):
  """Logits from one corner pixel of the image and one of the source copy (not invariant)."""

  @nn.compact
  def __call__(self, batch, train=False):
    x, s = batch["image"], batch["source_image"]
    return {"logits": nn.Dense(1)(jnp.concatenate([x[:, 0, 1], s[:, 2, 0]], -1))}


def test_tta_views_transform_the_source_copy_with_the_image():
  """The dihedral views flip / transpose a source_image (data.source_size) with the image,
  so a model cropping from it sees one consistent view."""
  rng = np.random.default_rng(2)
  image = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  source = rng.normal(size=(2, 10, 10, 3)).astype(np.float32)
  batch = {"image": jnp.asarray(image), "source_image": jnp.asarray(source),
           "masks": jnp.zeros((2, 5, 5, 1), jnp.float32)}
  module = _SourceCorner()
  variables = module.init(jax.random.key(0), batch)
  tta = tta_lib.TTAModule(module, 8).apply(variables, batch)
  views = [{**batch, "image": tta_lib.dihedral(batch["image"], k),
            "source_image": tta_lib.dihedral(batch["source_image"], k)} for k in range(8)]
  expected = np.mean([jax.nn.sigmoid(module.apply(variables, v)["logits"]) for v in views], 0)
  np.testing.assert_allclose(jax.nn.sigmoid(tta["logits"]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("command", ["predict", "evaluate", "cv", "report"])
def test_help(command):
  out = subprocess.run([sys.executable, "-m", f"dermjax.{command}", "--help"],
                       capture_output=True, text=True, timeout=120, env=os.environ.copy())
  assert out.returncode in (0, 1), out.stderr[-2000:]   # absl's --help exits with 1
  assert f"python -m dermjax.{command}" in out.stdout and "--out" in out.stdout + (
      "--out" if command == "cv" else "")


def test_evaluate_command_with_tta_and_a_config_override(run, tmp_path):
  """The absl entry point: --config.<field> overrides the run's config.json; --tta=8."""
  code = ("import sys; from dermjax import models; models.MODELS['tiny'] = 'tiny_model'; "
          "from dermjax import evaluate; from absl import app; evaluate.define_flags(); "
          "evaluate.define_config_flag(sys.argv); app.run(evaluate.main)")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([trained_run.TESTS_DIR, env.get("PYTHONPATH", "")])
  out = subprocess.run([sys.executable, "-c", code, f"--workdir={run}", f"--out={tmp_path}",
                        "--split=test", "--tta=8", "--config.eval.num_visualizations=0"],
                       capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "results" / "test.json") as f:
    result = json.load(f)
  assert result["tta"] == 8 and result["diagnosis"]["num_examples"] == 8
  assert not (tmp_path / "explanations" / "test").exists() or not os.listdir(
      tmp_path / "explanations" / "test")


def test_listing_images(tmp_path):
  for name in ("a/x.jpg", "a/X_superpixels.png", "b/x.PNG", "b/c/y.jpeg", "b/readme.md"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  paths = predict.list_images([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "b/c/y.jpeg")])
  assert [os.path.relpath(p, tmp_path) for p in paths] == ["a/x.jpg", "b/c/y.jpeg", "b/x.PNG"]
  ids = predict.image_ids(paths)
  assert ids[1] == "y" and ids[0] != ids[2] and ids[0].endswith("a__x")  # repeated stems
  with pytest.raises(FileNotFoundError, match="no such image"):
    predict.list_images([str(tmp_path / "missing")])
