"""Host input pipeline: crop geometry, batch format, sharding over processes, resume, eval."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from dermjax import config_lib
from dermjax import input_pipeline as ip
from dermjax.data import loader
from dermjax.data import metadata
from dermjax.data import sampling
from dermjax.data import schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(i, rng):
  h, w = (int(v) for v in rng.integers(40, 72, 2))
  lesion = np.zeros((h, w), np.uint8)
  lesion[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 1
  attributes = np.zeros((h, w, schema.NUM_ATTRIBUTES), np.uint8)
  attributes[: h // 2, :, i % schema.NUM_ATTRIBUTES] = 1
  return {
      "id": f"ISIC_{i:07d}", "split": "train",
      "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
      "melanoma": np.int32(i % 4 == 0), "keratosis": np.int32(i % 4 == 1),
      "label": np.int32(1 if i % 4 == 0 else 2 if i % 4 == 1 else 0),
      "lesion_mask": lesion, "attribute_masks": attributes,
      "has_lesion_mask": np.bool_(True), "has_attributes": np.bool_(i % 2 == 0),
      "age": np.float32(45.0 if i % 3 else np.nan), "sex": np.int32(i % 3 - 1),
      "site": np.int32(i % 10 - 1), "patient_id": "",
  }


@pytest.fixture(scope="module")
def records():
  rng = np.random.default_rng(0)
  return [_record(i, rng) for i in range(22)]


def _loader(source, size=16):
  return loader.ExampleLoader(source, size, 20, "resize_center_crop", 0.8, "melanoma")


def _schedule(source, mode="oversample", seed=0):
  mel = np.array([r["melanoma"] for r in source])
  return sampling.EpochSchedule(mel, mel, mode=mode, seed=seed)


# --- geometry ------------------------------------------------------------------------


def test_resize_center_crop_at_unit_scale_is_the_centre():
  img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
  box = loader.crop_box(40, 40, image_size=32, resize_size=40, crop="resize_center_crop")
  assert box == (4, 4, 36, 36)
  np.testing.assert_array_equal(loader.resize_image(img, box, 32), img[4:36, 4:36])
  np.testing.assert_array_equal(loader.resize_masks(img, box, 32), img[4:36, 4:36])


def test_center_fraction_keeps_the_central_square():
  img = np.random.default_rng(1).integers(0, 256, (50, 80, 3), dtype=np.uint8)
  box = loader.crop_box(50, 80, image_size=40, resize_size=40, crop="center_fraction",
                    crop_fraction=0.8)  # side 0.8 * 50 = 40.
  assert box == (20, 5, 60, 45)
  np.testing.assert_array_equal(loader.resize_image(img, box, 40), img[5:45, 20:60])


def test_downscaled_crop_maps_coordinates_and_masks_stay_binary():
  # Thesis-style: a 64 px image resized to 32 then centre-cropped to 24 reads rows/cols 8..56.
  cols = np.tile(np.arange(64, dtype=np.uint8)[None, :] * 4, (64, 1))
  img = np.stack([cols, cols.T, np.zeros_like(cols)], -1)
  box = loader.crop_box(64, 64, image_size=24, resize_size=32, crop="resize_center_crop")
  assert box == (8, 8, 56, 56)
  out = loader.resize_image(img, box, 24).astype(float)
  expected = 4 * (8 + 2 * np.arange(24) + 0.5)   # centre of output pixel j in input pixels.
  np.testing.assert_allclose(out[12, :, 0], expected, atol=2.5)
  np.testing.assert_allclose(out[:, 12, 1], expected, atol=2.5)
  mask = np.zeros((64, 64, 2), np.uint8)
  mask[20:40, 30:50, 0] = 1
  small = loader.resize_masks(mask, box, 24)
  assert small.shape == (24, 24, 2) and set(np.unique(small)) <= {0, 1}
  ys, xs = np.nonzero(small[..., 0])
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 15, 11, 20)  # (20-8)/2 ... (40-8)/2-1


def test_bad_geometry_is_rejected():
  with pytest.raises(ValueError, match="image_size"):
    loader.crop_box(10, 10, image_size=32, resize_size=24, crop="resize_center_crop")
  with pytest.raises(ValueError, match="data.crop "):
    loader.crop_box(10, 10, image_size=8, resize_size=8, crop="random")


# --- batches ---------------------------------------------------------------------------


def test_host_batch_format(records):
  batch = next(iter(ip.train_dataset(_loader(records), _schedule(records), global_batch_size=4)))
  expected = {
      "image": ((4, 16, 16, 3), np.uint8), "masks": ((4, 16, 16, 1 + schema.NUM_ATTRIBUTES), np.uint8),
      "has_lesion_mask": ((4,), np.float32), "has_attributes": ((4,), np.float32),
      "evidence_mask": ((4, 16, 16), np.uint8), "has_evidence_mask": ((4,), np.float32),
      "label": ((4,), np.int32), "melanoma": ((4,), np.int32), "age": ((4,), np.float32),
      "sex": ((4,), np.int32), "site": ((4,), np.int32), "valid": ((4,), np.float32),
      "index": ((4,), np.int32),
  }
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
  assert expected == schema.batch_spec(16, 4)
  for row, i in enumerate(batch["index"]):
    r = records[i]
    assert batch["label"][row] == r["melanoma"] == batch["melanoma"][row]
    np.testing.assert_array_equal([batch["has_lesion_mask"][row], batch["has_attributes"][row]],
                                  [1.0, float(r["has_attributes"])])
    np.testing.assert_array_equal([batch["sex"][row], batch["site"][row]], [r["sex"], r["site"]])
  assert set(np.unique(batch["masks"])) <= {0, 1} and batch["masks"][..., 0].any()
  assert (batch["valid"] == 1).all()


def test_metadata_encoding():
  meta = np.asarray(metadata.encode([60.0], [1], [3]))[0]
  assert meta.shape == (schema.META_DIM,)
  np.testing.assert_allclose(meta[:5], [0.6, 0, 0, 1, 0])
  assert meta[5 + 3] == 1 and meta.sum() == pytest.approx(0.6 + 2)
  missing = np.asarray(metadata.encode([np.nan], [-1], [-1]))[0]
  np.testing.assert_array_equal(np.nonzero(missing)[0], [1, 4, schema.META_DIM - 1])


def test_processes_load_their_own_rows(records):
  whole = ip.train_dataset(_loader(records), _schedule(records), global_batch_size=6,
                           process_index=0, process_count=1)
  halves = [iter(ip.train_dataset(_loader(records), _schedule(records), global_batch_size=6,
                                  process_index=p, process_count=2)) for p in range(2)]
  for batch, _ in zip(whole, range(3)):
    parts = [next(h) for h in halves]
    assert all(len(p["index"]) == 3 for p in parts)
    np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), batch["index"])
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), batch["image"])


def test_train_follows_the_sampler_across_epochs(records):
  schedule = _schedule(records, mode="oversample", seed=3)
  seen = np.concatenate([b["index"] for b, _ in zip(
      ip.train_dataset(_loader(records), schedule, global_batch_size=4, num_threads=2),
      range(2 * schedule.length // 4))])
  expected = np.concatenate([sampling.epoch_indices(
      schedule.classes, schedule.melanoma, mode="oversample", epoch=e, seed=3) for e in (0, 1)])
  np.testing.assert_array_equal(seen, expected[:len(seen)])


def test_resume_gives_the_same_next_batches(records):
  make = lambda: iter(ip.train_dataset(_loader(records), _schedule(records, seed=1),
                                       global_batch_size=4, num_threads=3))
  first = make()
  for _ in range(5):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  expected = [next(first) for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  other_seed = next(iter(ip.train_dataset(_loader(records), _schedule(records, seed=2),
                                          global_batch_size=4)))
  assert not np.array_equal(other_seed["index"], next(iter(make()))["index"])


def test_eval_covers_every_example_once(records):
  n = len(records)  # 22 = 2 * 8 + 6: the last global batch has 2 padding rows.
  indices, valid = [], []
  parts = [list(ip.eval_dataset(_loader(records), n, global_batch_size=8, process_index=p,
                                process_count=2)) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == 3
  for a, b in zip(*parts):
    indices.append(np.concatenate([a["index"], b["index"]]))
    valid.append(np.concatenate([a["valid"], b["valid"]]))
  indices, valid = np.concatenate(indices), np.concatenate(valid)
  np.testing.assert_array_equal(indices[valid == 1], np.arange(n))
  assert (indices[valid == 0] == -1).all() and (valid == 0).sum() == 2
  last = parts[1][-1]
  assert (last["image"][last["valid"] == 0] == 0).all()


def test_global_batch_on_a_one_device_mesh(records):
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  make = lambda start_batch: ip.train_dataset(_loader(records), _schedule(records),
                                             start_batch=start_batch,
                                       global_batch_size=4)
  train = ip.TrainIterator(make, ip.batch_sharding(mesh))
  batches = [next(train) for _ in range(4)]
  assert isinstance(batches[0]["image"], jax.Array) and batches[0]["image"].dtype == np.uint8
  state = json.loads(json.dumps(train.get_state()))
  assert state == {"next_batch": 4}
  want = next(train)
  resumed = ip.TrainIterator(make, ip.batch_sharding(mesh))
  resumed.set_state(state)
  got = next(resumed)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


_SHARDED = textwrap.dedent("""
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import sys
  sys.path.insert(0, {repo!r})
  import jax, numpy as np
  from dermjax import input_pipeline as ip
  from dermjax.data import augment, loader, sampling
  sys.path.insert(0, {tests!r})
  from test_input_pipeline import _record
  rng = np.random.default_rng(0)
  records = [_record(i, rng) for i in range(20)]
  mel = np.array([r["melanoma"] for r in records])
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  assert len(jax.devices()) == 8
  examples = loader.ExampleLoader(records, 16, 20, "resize_center_crop", 0.8, "melanoma")
  schedule = sampling.EpochSchedule(mel, mel, mode="none")
  train = ip.TrainIterator(
      lambda start_batch: ip.train_dataset(examples, schedule, start_batch=start_batch,
                                           global_batch_size=16),
      ip.batch_sharding(mesh))
  batch = next(train)
  for k, v in batch.items():
    assert isinstance(v, jax.Array), k
    assert v.sharding.spec == jax.sharding.PartitionSpec("data"), (k, v.sharding)
    assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape[0] == 2, k
  aug = dict(rotation=True, max_rotation_deg=180, hflip=True, vflip=True, zoom=(0.8, 1.0))
  fn = jax.jit(lambda b, k: augment.device_preprocess(b, k, mean=np.zeros(3), std=np.ones(3),
                                                      aug_config=aug, train=True))
  out = fn(batch, jax.random.key(0))
  assert out["image"].sharding.spec == jax.sharding.PartitionSpec("data"), out["image"].sharding
  local = fn(jax.tree.map(np.asarray, batch), jax.random.key(0))
  np.testing.assert_allclose(np.asarray(out["image"]), np.asarray(local["image"]), atol=1e-3)
  np.testing.assert_array_equal(np.asarray(out["masks"]), np.asarray(local["masks"]))
  print("SHARDED OK")
""")


def test_batches_are_sharded_over_eight_devices():
  script = _SHARDED.format(repo=REPO, tests=os.path.join(REPO, "tests"))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
  assert "SHARDED OK" in result.stdout, result.stdout + result.stderr


# --- prepared data, end to end -------------------------------------------------------


def _mesh():
  return jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _config(**overrides):
  c = config_lib.data_config()
  c.image_size, c.resize_size, c.batch_size, c.eval_batch_size = 32, 40, 4, 5
  c.num_threads = 2
  c.update(overrides)
  return c


def test_jpeg_draft_decodes_small_and_close(tmp_path):
  from PIL import Image
  yy, xx = np.mgrid[:600, :800]
  img = np.stack([yy * 255 // 600, xx * 255 // 800, (yy + xx) % 256], -1).astype(np.uint8)
  path = tmp_path / "big.jpg"
  Image.fromarray(img).save(path, quality=95)
  box_fn = lambda h, w: loader.crop_box(h, w, image_size=32, resize_size=40, crop="center_fraction")
  small, box = loader.decode_jpeg_for(path.read_bytes(), box_fn, 32)
  assert small.size == (100, 75)   # 1/8 DCT scale: the 0.8 * 600 * 0.8 = 384 px box -> 48 px.
  assert min(box[2] - box[0], box[3] - box[1]) >= 32
  fast = loader.resize_image(small, box, 32).astype(float)
  full = loader.resize_image(np.asarray(Image.open(path)), box_fn(600, 800), 32).astype(float)
  assert np.abs(fast - full)[..., :2].mean() < 3.0


@pytest.mark.parametrize("source_size", [0, 48])
def test_prepared_loader_matches_the_record_loader(isic2017_prepared, source_size):
  from dermjax.data import prepare
  prepared = prepare.load(*isic2017_prepared)
  c = _config(source_size=source_size)
  fast = loader.loader_from_config(prepared.builder.as_data_source(split="train"), c,
                               loader.PreparedExampleLoader)
  plain = loader.loader_from_config(prepared.source("train"), c)
  for i in range(3):
    a, b = fast(i), plain(i)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_create_datasets_on_prepared_data(isic2017_prepared, isic2017_raw):
  from dermjax.data import prepare
  prepared_dir, layout = isic2017_prepared
  c = _config(dir=isic2017_raw, prepared_dir=prepared_dir, num_folds=3, sampling="oversample")
  data = ip.create_datasets(c, mesh=_mesh(), workdir=None)
  splits = prepare.load(prepared_dir, layout).splits["splits"]
  assert data.num_examples == {s: len(v) for s, v in splits.items()}
  assert sorted(data.ids["train"]) == splits["train"]
  assert data.class_names == ("other", "melanoma") and data.layout == "isic2017"
  np.testing.assert_allclose(data.mean, data.stats["mean"], rtol=1e-6)
  n_mel = data.stats["splits"]["train"]["melanoma"]
  assert data.steps_per_epoch == (len(splits["train"]) + 3 * n_mel) // 4
  batch = next(data.train)
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].sharding == data.sharding
  for row, i in enumerate(np.asarray(batch["index"])):
    record = data.source("train")[i]
    assert record["id"] == data.ids["train"][i]
    assert int(batch["label"][row]) == int(record["melanoma"])
  seen, n_batches = [], 0
  for batch in data.eval("validation"):
    n_batches += 1
    seen += [data.ids["validation"][i] for i, v in zip(np.asarray(batch["index"]),
                                                       np.asarray(batch["valid"])) if v]
  assert seen == data.ids["validation"] and n_batches == -(-len(seen) // 5)
  shapes = data.batch_shapes(train=False)
  assert shapes["masks"].shape == (5, 32, 32, 6) and shapes["image"].dtype == np.uint8


def test_normalization_and_source_copy_through_create_datasets(isic2017_prepared, isic2017_raw):
  """data.normalization picks the constants the step gets (Datasets.mean / std); a given
  record (a finished run's) wins; data.source_size adds source_image to every batch."""
  from dermjax.data import normalization
  prepared_dir, _ = isic2017_prepared
  c = _config(dir=isic2017_raw, prepared_dir=prepared_dir, num_folds=3, normalization="imagenet",
              source_size=48)
  data = ip.create_datasets(c, mesh=_mesh())
  assert data.normalization["mode"] == "imagenet"
  np.testing.assert_allclose(data.mean, [123.675, 116.28, 103.53], rtol=1e-6)
  np.testing.assert_allclose(data.std, [58.395, 57.12, 57.375], rtol=1e-6)
  batch = next(data.train)
  assert batch["source_image"].shape == (4, 48, 48, 3) and batch["source_image"].dtype == np.uint8
  assert batch["source_image"].sharding == data.sharding
  assert data.batch_shapes()["source_image"].shape == (4, 48, 48, 3)
  padded = list(data.eval("validation"))[-1]
  assert padded["source_image"].shape == (5, 48, 48, 3)
  recorded = {"mode": "fixed", "mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}
  data = ip.create_datasets(_config(dir=isic2017_raw, prepared_dir=prepared_dir, num_folds=3),
                            mesh=_mesh(), normalization=recorded)
  assert data.normalization["mode"] == "fixed" and list(data.std) == [4.0, 5.0, 6.0]
  with pytest.raises(ValueError, match="data.normalization must be one of"):
    ip.create_datasets(_config(dir=isic2017_raw, prepared_dir=prepared_dir, num_folds=3,
                               normalization="imagenet21k"), mesh=_mesh())
  assert normalization.MODES == ("dataset", "imagenet", "fixed")


def test_source_image_is_the_same_box_at_the_source_size(records):
  """The host ships the example's crop box a second time at data.source_size (uint8);
  at source_size == image_size it is the image itself."""
  big = loader.ExampleLoader(records, 16, 20, "resize_center_crop", 0.8, "melanoma",
                             source_size=40)
  example = big(3)
  image = records[3]["image"]
  box = big.box(*image.shape[:2])
  np.testing.assert_array_equal(example["source_image"], loader.resize_image(image, box, 40))
  np.testing.assert_array_equal(example["image"], _loader(records)(3)["image"])
  same = loader.ExampleLoader(records, 16, 20, "resize_center_crop", 0.8, "melanoma",
                              source_size=16)(3)
  np.testing.assert_array_equal(same["source_image"], same["image"])
  assert {k: v.shape for k, v in big.padding().items()} == {k: v.shape for k, v in example.items()}
  assert schema.batch_spec(16, 2, source_size=40)["source_image"] == ((2, 40, 40, 3), np.uint8)
  assert "source_image" not in schema.batch_spec(16, 2)
  with pytest.raises(ValueError, match="source_size"):
    loader.check_source_size(_config(source_size=24))          # below image_size 32
  with pytest.raises(ValueError, match="evidence_ablation"):
    loader.check_source_size(_config(source_size=64, evidence_ablation="blank"))


def test_folds_split_the_training_set(isic2017_prepared, isic2017_raw):
  from dermjax.data import prepare
  prepared_dir, layout = isic2017_prepared
  folds = prepare.load(prepared_dir, layout).splits["folds"]
  c = _config(dir=isic2017_raw, prepared_dir=prepared_dir, num_folds=3, fold=1)
  data = ip.create_datasets(c, mesh=_mesh())
  assert {folds[i] for i in data.ids["validation"]} == {1}
  assert 1 not in {folds[i] for i in data.ids["train"]}
  assert sorted(data.ids["train"] + data.ids["validation"]) == sorted(folds)
  i = 2
  assert data.source("validation")[i]["id"] == data.ids["validation"][i]
  with pytest.raises(ValueError, match="data.fold"):
    ip.create_datasets(_config(dir=isic2017_raw, prepared_dir=prepared_dir, num_folds=3, fold=3),
                       mesh=_mesh())


def test_no_dataset_path_uses_synthetic_data(tmp_path, caplog):
  c = _config(synthetic_num_images={"train": 8, "validation": 2, "test": 2}, batch_size=2,
              num_folds=2)
  with caplog.at_level("WARNING"):
    data = ip.create_datasets(c, mesh=_mesh(), workdir=str(tmp_path))
  assert "no dataset path given (config.data.dir); using synthetic ISIC 2017 data in" in caplog.text
  assert str(tmp_path / "synthetic_isic2017") in caplog.text
  assert data.num_examples == {"train": 8, "validation": 2, "test": 2}
  assert next(data.train)["image"].shape == (2, 32, 32, 3)
  again = ip.create_datasets(c, mesh=_mesh(), workdir=str(tmp_path))   # Reuses both.
  assert again.ids == data.ids
  c.synthetic_num_images = {"train": 9, "validation": 2, "test": 2}
  with pytest.raises(ValueError, match="other settings"):
    ip.create_datasets(c, mesh=_mesh(), workdir=str(tmp_path))


_WORKERS = textwrap.dedent("""
  import os, sys, json
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
  from absl import app
  import numpy as np

  def main(_):
    from dermjax import input_pipeline as ip
    from dermjax.data import loader, sampling
    from test_input_pipeline import _record
    rng = np.random.default_rng(0)
    records = [_record(i, rng) for i in range(12)]
    mel = np.array([r["melanoma"] for r in records])
    examples = loader.ExampleLoader(records, 16, 20, "resize_center_crop", 0.8, "melanoma")
    schedule = sampling.EpochSchedule(mel, mel, mode="oversample", seed=4)
    make = lambda workers, start: ip.train_dataset(examples, schedule, global_batch_size=4,
                                                   start_batch=start, num_workers=workers)
    plain = iter(make(0, 0))
    want = [next(plain) for _ in range(6)]
    pooled = iter(make(2, 2))
    for w in want[2:]:
      got = next(pooled)
      for k in w:
        np.testing.assert_array_equal(got[k], w[k], err_msg=k)
    print("WORKERS OK")

  if __name__ == "__main__":
    app.run(main)
""")


def test_worker_processes_give_the_same_batches():
  script = _WORKERS.format(repo=REPO, tests=os.path.join(REPO, "tests"))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
  assert "WORKERS OK" in result.stdout, result.stdout + result.stderr[-3000:]


def test_default_config_drives_device_preprocess():
  from dermjax.data import augment
  c = config_lib.data_config()
  assert (c.image_size, c.resize_size, c.batch_size, c.sampling) == (224, 256, 8, "none")
  c.augment.max_rotation_deg = "any"   # a number or "any".
  batch = {"image": np.full((2, 8, 8, 3), 7, np.uint8), "masks": np.ones((2, 8, 8, 6), np.uint8)}
  out = jax.jit(lambda b, k: augment.device_preprocess(
      b, k, mean=np.full(3, 7.0), std=np.ones(3), aug_config=c.augment, train=True))(
          batch, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(out["image"]), 0.0, atol=1e-5)
  assert (np.asarray(out["masks"]) == 1).all()
