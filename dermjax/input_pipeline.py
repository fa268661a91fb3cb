"""Host side of the input pipeline: prepared ISIC records -> global batches on a device mesh.

  record (schema.py, original resolution)
    -> crop + resize to data.image_size (uint8 image, nearest-neighbour masks)   host, data/loader.py
    -> host batch (schema.py batch format + int32 `index`)                      host, grain
    -> jax.Array sharded along the batch over mesh axis "data"                  device
    -> dermjax.data.augment.device_preprocess (normalise, augment)              in the step

Each process loads only its rows of every global batch (`jax.process_index`). Training
cycles endlessly over epochs drawn by dermjax.data.sampling (deterministic in the seed,
independent of worker and thread counts); its state is the number of batches consumed,
so it resumes exactly. Evaluation passes are finite and in order, the last batch padded
with rows that have valid = 0, index = -1. The crop geometry (data.crop) and per-example
decoding live in dermjax/data/loader.py.
"""

import dataclasses
import functools
import json
import logging
import os
from typing import Callable, Iterator

import grain
import jax
import numpy as np
from absl import flags

from dermjax.data import isic
from dermjax.data import loader as loader_lib
from dermjax.data import normalization as normalization_lib
from dermjax.data import prepare
from dermjax.data import sampling
from dermjax.data import schema
from dermjax.data import synthetic

_ENDLESS = 2**62  # "Infinite" length of the training position stream.


# --- grain pipelines ----------------------------------------------------------------


def host_batch_size(global_batch_size, process_count=None):
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the {process_count} "
                     "processes")
  return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class _HostRows:
  """Host example j -> its global position: this process's rows of each global batch."""
  global_batch_size: int
  process_index: int
  process_count: int
  then: Callable = int  # global position -> split position

  def __call__(self, j):
    local = self.global_batch_size // self.process_count
    batch, row = divmod(int(j), local)
    return self.then(batch * self.global_batch_size + self.process_index * local + row)


@dataclasses.dataclass(frozen=True)
class _PadTo:
  """Global eval position -> split position, -1 past the end."""
  num_examples: int

  def __call__(self, position):
    return position if position < self.num_examples else -1


def _finish(dataset, host_batch, *, num_threads, num_workers, prefetch):
  dataset = dataset.batch(host_batch, drop_remainder=True)
  dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=max(int(num_threads), 1),
      prefetch_buffer_size=max(int(prefetch), int(num_threads), 1)))
  if num_workers:
    if not flags.FLAGS.is_parsed():
      raise RuntimeError(f"data.num_workers = {num_workers} starts grain worker processes, which "
                         "need absl flags parsed: run under absl.app.run (with an "
                         "`if __name__ == '__main__':` guard), or set data.num_workers = 0")
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(num_workers), per_worker_buffer_size=max(int(prefetch), 1)))
  return dataset


def train_dataset(loader, schedule, *, global_batch_size, start_batch=0, process_index=None,
                  process_count=None, num_threads=4, num_workers=0, prefetch=2):
  """Endless grain IterDataset of this process's host batches of the training split, from
  global batch `start_batch` on.

  schedule: global position -> split position (dermjax.data.sampling.EpochSchedule).
  The batches do not depend on num_workers / num_threads.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local = host_batch_size(global_batch_size, process_count)
  rows = _HostRows(global_batch_size, process_index, process_count, schedule)
  dataset = grain.MapDataset.range(int(start_batch) * local, _ENDLESS).map(rows).map(loader)
  return _finish(dataset, local, num_threads=num_threads, num_workers=num_workers,
                 prefetch=prefetch)


def eval_dataset(loader, num_examples, *, global_batch_size, process_index=None,
                 process_count=None, num_threads=4, prefetch=2):
  """Finite, ordered grain IterDataset over a split, padded to whole global batches."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local = host_batch_size(global_batch_size, process_count)
  num_batches = -(-num_examples // global_batch_size)
  rows = _HostRows(global_batch_size, process_index, process_count, _PadTo(num_examples))
  dataset = grain.MapDataset.range(num_batches * local).map(rows).map(loader)
  return _finish(dataset, local, num_threads=num_threads, num_workers=0, prefetch=prefetch)


def to_global(host_batch, sharding):
  """Host batch (this process's rows) -> dict of global jax.Arrays with `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), host_batch)


class TrainIterator:
  """Endless iterator of global training batches that resumes exactly.

  make_dataset(start_batch) -> grain IterDataset of host batches from that batch on. The
  state is just the number of batches handed out, so it does not depend on num_workers.
  """

  def __init__(self, make_dataset, sharding, start_batch=0):
    self._make_dataset = make_dataset
    self._sharding = sharding
    self._start(start_batch)

  def _start(self, batch):
    old = getattr(self, "_iterator", None)
    if hasattr(old, "close"):  # Stops the old iterator's worker processes, if any.
      old.close()
    self._next_batch = int(batch)
    self._iterator = iter(self._make_dataset(start_batch=self._next_batch))

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._iterator)
    self._next_batch += 1
    return to_global(batch, self._sharding)

  def get_state(self) -> dict:
    """JSON-serialisable position: {"next_batch": batches consumed so far}."""
    return {"next_batch": self._next_batch}

  def set_state(self, state: dict):
    if not isinstance(state, dict) or "next_batch" not in state:
      raise ValueError(f"not a TrainIterator state: {state!r}")
    self._start(state["next_batch"])


def batch_sharding(mesh):
  """Batch axis over mesh axis "data", everything else replicated."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


# --- from config to datasets ---------------------------------------------------------


class Subset:
  """Random-access view of `source` at `indices` (a fold of the training split)."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


def class_names(layout, target):
  """Names of the values `label` takes for `target`."""
  if target == "melanoma":
    return ("other", "melanoma")
  if loader_lib.TARGETS.get(target) == "keratosis":
    return ("other", "seborrheic_keratosis")
  if target == "multiclass":
    return isic.classes(layout)
  raise ValueError(f"data.target must be one of {tuple(loader_lib.TARGETS)}, got {target!r}")


def synthetic_dir(data_config, workdir):
  """Where the synthetic stand-in for data.dir lives."""
  if data_config.synthetic_dir:
    return data_config.synthetic_dir
  return os.path.join(workdir or ".", f"synthetic_{data_config.layout}")


def ensure_synthetic(data_config, workdir) -> str:
  """Writes the synthetic dataset once (a marker file records what was written)."""
  out_dir = synthetic_dir(data_config, workdir)
  num_images = data_config.synthetic_num_images
  num_images = None if num_images is None else {k: int(v) for k, v in dict(num_images).items()}
  difficulty = data_config.get("synthetic_difficulty", "easy") or "easy"
  synthetic.difficulty_strength(difficulty)  # a bad value fails before anything is written
  spec = {"layout": data_config.layout, "num_images": num_images, "seed": 0}
  if difficulty != "easy":  # easy sets keep the marker they always had
    spec["difficulty"] = difficulty
  age_signal = data_config.get("synthetic_age_signal")
  if age_signal is not None:
    spec["age_signal"] = bool(age_signal)
  marker = os.path.join(out_dir, "SYNTHETIC.json")
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f) == spec:
        return out_dir
    raise ValueError(f"{marker}: the synthetic data there was written with other settings; "
                     f"delete {out_dir} or set config.data.synthetic_dir elsewhere")
  synthetic.write_synthetic(data_config.layout, out_dir, num_images=num_images, seed=0,
                            difficulty=difficulty, age_signal=age_signal)
  with open(marker, "w") as f:
    json.dump(spec, f)
  return out_dir


class Datasets:
  """Everything the trainer needs from the data; built by create_datasets.

  train            endless TrainIterator of global batches (get_state / set_state)
  eval(split)      one ordered pass over a split, last batch padded (valid = 0, index = -1)
  source(split)    random-access records at original resolution, in ids[split] order
  ids              {split: [id, ...]}; a batch's `index` points into it
  num_examples, steps_per_epoch (data.passes_per_epoch x batches per pass), stats
  (stats.json), normalization ({"mode", "mean", "std"}: data.normalization's, or the one
  given, e.g. a finished run's), mean, std (its float32 [3], 0-255), layout, class_names,
  sharding (of every batch array)
  """

  def __init__(self, *, data_config, mesh, loaders, sources, ids, stats, train_classes,
               train_melanoma, normalization=None):
    c = data_config
    self.config = c
    self.layout = c.layout
    self.class_names = class_names(c.layout, c.target)
    self.stats = stats
    self.normalization = (normalization_lib.normalization(c, stats) if normalization is None
                          else normalization_lib.from_record(normalization))
    self.mean, self.std = self.normalization["mean"], self.normalization["std"]
    self.ids = {split: list(v) for split, v in ids.items()}
    self.num_examples = {split: len(v) for split, v in self.ids.items()}
    self.sharding = batch_sharding(mesh)
    self._loaders, self._sources = loaders, sources
    _check_batch(c.batch_size, mesh, "data.batch_size")
    _check_batch(c.eval_batch_size, mesh, "data.eval_batch_size")
    self.schedule = sampling.EpochSchedule(train_classes, train_melanoma, mode=c.sampling,
                                           seed=c.seed, factor=c.oversample_factor)
    # An epoch is data.passes_per_epoch passes of whole batches (AttnMel's code: num_aug).
    passes = int(c.get("passes_per_epoch", 1))
    if passes < 1:
      raise ValueError(f"data.passes_per_epoch must be >= 1, got {passes}")
    self.steps_per_epoch = passes * max(self.schedule.length // c.batch_size, 1)
    self.train = TrainIterator(functools.partial(
        train_dataset, loaders["train"], self.schedule, global_batch_size=c.batch_size,
        num_threads=c.num_threads, num_workers=c.num_workers, prefetch=c.prefetch),
        self.sharding)

  def source(self, split):
    if split not in self._sources:
      raise ValueError(f"no split {split!r}; have {tuple(self._sources)}")
    return self._sources[split]

  def eval(self, split) -> Iterator[dict]:
    if split not in self._loaders:
      raise ValueError(f"no split {split!r}; have {tuple(self._loaders)}")
    c = self.config
    dataset = eval_dataset(self._loaders[split], self.num_examples[split],
                           global_batch_size=c.eval_batch_size, num_threads=c.num_threads,
                           prefetch=c.prefetch)
    return (to_global(batch, self.sharding) for batch in dataset)

  def batch_shapes(self, train=True) -> dict:
    """jax.ShapeDtypeStruct per batch entry (global shapes), e.g. for model init."""
    size = self.config.batch_size if train else self.config.eval_batch_size
    spec = schema.batch_spec(self.config.image_size, size,
                             source_size=self.config.get("source_size", 0))
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.sharding)
            for k, (shape, dtype) in spec.items()}


def _check_batch(size, mesh, name):
  if "data" not in mesh.axis_names:
    raise ValueError(f"the mesh needs a 'data' axis for the batch, has {mesh.axis_names}")
  if size % mesh.shape["data"]:
    raise ValueError(f"{name} = {size} is not divisible by the {mesh.shape['data']} devices "
                     "of mesh axis 'data'")


def split_index(data_source, chunk=64) -> dict:
  """Stored examples of a prepared split -> {"ids": [str], "melanoma"/"keratosis"/"label":
  int32 [N]} in source order, without decoding any image."""
  ids, columns = [], {k: [] for k in ("melanoma", "keratosis", "label")}
  for start in range(0, len(data_source), chunk):
    for example in data_source.__getitems__(range(start, min(start + chunk, len(data_source)))):
      value = example["id"]
      ids.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
      for k, v in columns.items():
        v.append(int(example[k]))
  return {"ids": ids, **{k: np.asarray(v, np.int32) for k, v in columns.items()}}


def _take(index, positions):
  return {k: [v[i] for i in positions] if k == "ids" else v[positions] for k, v in index.items()}


def fold_roles(split_file: dict, train_ids, fold: int, protocol: str = "carved_test") -> dict:
  """{split: positions in the prepared training split} of `fold` (splits.json's folds).

  "carved_test": fold k is the validation split, the other folds train (the carved test
  split stays as prepared). "cv": fold k is the test split, fold k + 1 (mod K) the
  validation split that chooses the checkpoint and the thresholds, the other K - 2 folds
  train; over k = 0 .. K-1 every image is tested once.
  """
  folds, num_folds = split_file.get("folds", {}), int(split_file.get("num_folds", 0))
  if not 0 <= fold < num_folds or not folds:
    raise ValueError(f"data.fold = {fold} but the prepared splits.json has {num_folds} folds "
                     f"over {len(folds)} training images")
  if protocol == "cv" and num_folds < 3:
    raise ValueError(f"data.protocol = 'cv' needs data.num_folds >= 3 (test, validation and "
                     f"training folds), got {num_folds}")
  fold_of = np.array([folds[i] for i in train_ids])
  if protocol != "cv":
    return {"validation": np.flatnonzero(fold_of == fold),
            "train": np.flatnonzero(fold_of != fold)}
  inner = (fold + 1) % num_folds
  return {"test": np.flatnonzero(fold_of == fold),
          "validation": np.flatnonzero(fold_of == inner),
          "train": np.flatnonzero((fold_of != fold) & (fold_of != inner))}


def create_datasets(data_config, *, mesh, workdir=None, normalization=None) -> Datasets:
  """config.data -> Datasets: prepares the data once (synthetic when data.dir is None).

  normalization: {"mode", "mean", "std"} to use instead of data.normalization's (a finished
  run's record: dermjax.evaluate normalises as the run was trained)."""
  c = data_config
  label_key = loader_lib.target_key(c.target)
  # Bad values fail before any writing.
  loader_lib.check_evidence_ablation(c.get("evidence_ablation", "none"))
  normalization_lib.check(c)
  loader_lib.check_source_size(c)
  protocol = c.get("protocol", "carved_test")
  if protocol == "cv" and c.fold is None:
    raise ValueError("data.protocol = 'cv' needs data.fold (the held-out fold, 0 .. "
                     f"{int(c.num_folds) - 1}); run the folds with dermjax.cv")
  if c.dir is None:
    raw_dir = ensure_synthetic(c, workdir)
    logging.warning("no dataset path given (config.data.dir); using synthetic %s data in %s",
                    "ISIC " + c.layout[4:8] if c.layout.startswith("isic") else c.layout,
                    raw_dir)
  else:
    raw_dir = c.dir
  prepared_dir = c.prepared_dir or os.path.join(raw_dir, "prepared")
  prepare.prepare(c.layout, raw_dir, prepared_dir, seed=int(c.split_seed),
                  num_folds=int(c.num_folds), protocol=protocol,
                  validation_fraction=c.get("validation_fraction", None))
  prepared = prepare.load(prepared_dir, c.layout)
  splits = [s for s in schema.SPLITS if s in prepared.stats["splits"]]
  if "train" not in splits:
    raise ValueError(f"{prepared.path} has no training split (it has {splits})")
  raw = {s: prepared.builder.as_data_source(split=s) for s in splits}
  records = {s: prepared.source(s) for s in splits}
  index = {s: split_index(raw[s]) for s in splits}

  if c.fold is not None:
    roles = fold_roles(prepared.splits, index["train"]["ids"], int(c.fold), protocol)
    train_raw, train_records = raw["train"], records["train"]
    for split, rows in roles.items():
      raw[split], records[split] = Subset(train_raw, rows), Subset(train_records, rows)
    index.update({split: _take(index["train"], rows) for split, rows in roles.items()})

  loaders = {s: loader_lib.loader_from_config(raw[s], c, loader_lib.PreparedExampleLoader) for s in raw}
  return Datasets(data_config=c, mesh=mesh, loaders=loaders, sources=records,
                  ids={s: v["ids"] for s, v in index.items()}, stats=prepared.stats,
                  train_classes=index["train"][label_key],
                  train_melanoma=index["train"]["melanoma"], normalization=normalization)
