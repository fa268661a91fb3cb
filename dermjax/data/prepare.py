"""One-off preparation of an ISIC layout into an array_record TFDS dataset, and loading it.

  prepare(layout, raw_dir, prepared_dir)  ->  prepared_dir/<layout>/
      stats.json    per-split counts, class/melanoma counts, the gaze structures' presences
                    and pixel shares (thesis Table 1, via dermjax.data.structures; logged
                    for the training split), image sizes, and the training split's RGB
                    mean/std (0-255)
      splits.json   ids per split and a stratified fold index per training id (grouped
                    by lesion / patient / duplicate pair, dermjax.data.isic.splits), and
                    the split settings (protocol, derived fractions) they were made with
      tfds/         the `dermjax_isic/<layout>` builder's array_record files (one example
                    per image in dermjax.data.codec's format)

Every file is decoded and checked in one pass; all problems are reported together in
one DatasetError and nothing is left behind. The dataset is built in a temporary
directory next to the target and renamed into place at the end, so an earlier good
prepared dataset survives a failed re-prepare. A missing raw_dir creates nothing. One
prepare of a layout runs at a time (flock on prepared_dir/.<layout>.lock); it first
removes the temporary folders a killed prepare left, and the dataset gets the umask's
permissions (0755 usually), so a shared prepared folder is readable by others.

  load(prepared_dir, layout).source(split)[i] -> record (schema.py), decoded with PIL.

Every load checks the dataset's array_record shards against its own record (TFDS
dataset_info.json: each split's shard files and record counts, read from each shard's
footer: milliseconds): a deleted or truncated shard fails there in one DatasetError line
naming the file. `prepare` on a damaged dataset whose raw data is still there prepares it
again (saying so); without the raw data the error says to delete prepared/<layout>.
"""

import dataclasses
import fcntl
import functools
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from dermjax.data import codec
from dermjax.data import isic
from dermjax.data import schema
from dermjax.data import shards
from dermjax.data import structures
from dermjax.data.errors import DatasetError
from dermjax.data.tfds_builders import isic_builder

__all__ = ["DatasetError", "prepare", "load", "Prepared", "Source"]

FORMAT_VERSION = 1


# --- statistics ---------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def code_structures() -> np.ndarray:
  """bool [256, S]: the gaze structures (eqs. 17-19) a pixel with each packed mask code is in.

  Structures are per-pixel functions of the lesion/attribute bits, so an image's presences
  and structure pixel counts follow from its histogram of codes (one bincount per image).
  """
  lesion, attributes = codec.unpack_masks(np.arange(256, dtype=np.uint8)[None])   # [1, 256], [1, 256, A]
  masks = np.concatenate([lesion[..., None], attributes], -1)
  return np.asarray(structures.structure_masks(masks))[0] > 0.5


def structure_table(summary: dict) -> str:
  """Thesis Table 1 for one split's stats.json summary: images and pixels per structure."""
  n = max(summary["num_with_masks"], 1)
  lines = [f"{'structure':<18}{'images':>8}{'% images':>10}{'% pixels':>10}"]
  for name in schema.STRUCTURES:
    count = summary["structure_presence"][name]
    share = 100 * summary["structure_pixel_share"][name]
    lines.append(f"{name:<18}{count:>8d}{100 * count / n:>10.2f}{share:>10.2f}")
  return "\n".join(lines)



class _SplitStats:
  """Accumulates one split's counts, sizes, presences and (train) pixel moments."""

  def __init__(self, num_classes, pixels):
    self.n = self.melanoma = self.keratosis = self.with_masks = self.with_attributes = 0
    self.with_evidence = 0
    self.classes = np.zeros(num_classes, np.int64)
    self.presence = np.zeros(schema.NUM_STRUCTURES, np.int64)
    self.structure_pixels = np.zeros(schema.NUM_STRUCTURES, np.int64)
    self.mask_pixels = 0
    self.heights, self.widths = [], []
    self.pixels = pixels
    self.count, self.sum, self.sumsq = 0, np.zeros(3), np.zeros(3)

  def add(self, record, codes):
    self.n += 1
    self.melanoma += int(record["melanoma"] == 1)
    self.keratosis += int(record["keratosis"] == 1)
    self.with_evidence += int(bool(record.get("has_evidence_mask", False)))
    if record["label"] >= 0:
      self.classes[record["label"]] += 1
    h, w = record["image"].shape[:2]
    self.heights.append(h)
    self.widths.append(w)
    if record["has_lesion_mask"] or record["has_attributes"]:
      self.with_masks += 1
      self.with_attributes += int(record["has_attributes"])
      # Presences and pixel counts from the image's histogram of mask codes.
      counts = np.bincount(codes.ravel(), minlength=256).astype(np.int64)
      table = code_structures()
      self.presence += np.any(table & (counts[:, None] > 0), axis=0)
      self.structure_pixels += counts @ table.astype(np.int64)
      self.mask_pixels += int(codes.size)
    if self.pixels:
      for rows in np.array_split(record["image"], max(1, h // 512)):
        rows = rows.reshape(-1, 3).astype(np.float64)
        self.count += len(rows)
        self.sum += rows.sum(0)
        self.sumsq += np.square(rows).sum(0)

  def summary(self):
    size = lambda v: {"min": int(min(v)), "max": int(max(v)), "mean": float(np.mean(v))} if v else {}
    return {
        "num_images": self.n, "melanoma": self.melanoma, "keratosis": self.keratosis,
        "class_counts": self.classes.tolist(), "num_with_masks": self.with_masks,
        "num_with_attributes": self.with_attributes,
        "num_with_evidence": self.with_evidence,
        "structure_presence": dict(zip(schema.STRUCTURES, self.presence.tolist())),
        # Table 1's "presence in pixels": structure pixels / all pixels of the images with
        # masks (original resolution; sums past 1 where attributes overlap).
        "structure_pixels": dict(zip(schema.STRUCTURES, self.structure_pixels.tolist())),
        "structure_pixel_share": dict(zip(schema.STRUCTURES, (
            self.structure_pixels / max(self.mask_pixels, 1)).tolist())),
        "num_mask_pixels": self.mask_pixels,
        "height": size(self.heights), "width": size(self.widths),
    }

  def moments(self):
    mean = self.sum / max(self.count, 1)
    std = np.sqrt(np.maximum(self.sumsq / max(self.count, 1) - mean ** 2, 0))
    return mean.tolist(), std.tolist()


class _Plan:
  """What the builder writes: `plan(split)` yields (key, example) and records stats and
  problems on the way (a bad file is skipped and named in `problems`)."""

  def __init__(self, layout, examples, splits, problems):
    self.splits = [s for s in schema.SPLITS if s in set(splits.values())]
    self.by_split = {s: [e for e in examples if splits[e.id] == s] for s in self.splits}
    self.problems = problems
    num_classes = len(isic.classes(layout))
    self.stats = {s: _SplitStats(num_classes, pixels=s == "train") for s in self.splits}

  def __call__(self, split, write=True):
    for example in self.by_split[split]:
      try:
        record = isic.load_example(example, split)
      except DatasetError as e:
        self.problems.extend(e.problems)
        continue
      codes = codec.pack_masks(record["lesion_mask"], record["attribute_masks"],
                         record["evidence_mask"] if record.get("has_evidence_mask") else None)
      self.stats[split].add(record, codes)
      if write:
        yield example.id, codec.encode(example, record, codes)


# --- prepare / load -----------------------------------------------------------------


def _builder(layout, data_dir):
  return isic_builder.DermjaxIsic(config=layout, data_dir=data_dir, file_format="array_record")


def _config(layout, seed, num_folds, split_settings):
  return {"layout": layout, "seed": seed, "num_folds": num_folds, "format": FORMAT_VERSION,
          "splits": split_settings}


def prepare(layout: str, raw_dir: str, prepared_dir: str, *, seed: int = 0,
            num_folds: int = 5, overwrite: bool = False, validation_fraction=None,
            protocol: str = "carved_test") -> str:
  """Checks and converts the raw `layout` dataset at `raw_dir`; returns the dataset dir
  (`prepared_dir/<layout>`). Returns at once if a complete one with the same layout,
  seed, folds and split settings (validation_fraction, protocol: dermjax.data.isic.splits)
  is there and its shards are whole (shards.problems); rebuilds it with `overwrite`, or when
  a shard is damaged and raw_dir is there. Raises DatasetError listing every bad file."""
  isic.layout_spec(layout)
  settings = dict(validation_fraction=validation_fraction, protocol=protocol)
  damage = []
  target = os.path.join(prepared_dir, layout)
  config = _config(layout, seed, num_folds, isic.split_settings(layout, **settings))
  stats_path = os.path.join(target, "stats.json")
  if os.path.exists(stats_path) and not overwrite:
    with open(stats_path) as f:
      found = json.load(f).get("config")
    if found != config:
      raise DatasetError([(target, f"was prepared with {found}, not {config}; delete it (the next "
                           "run prepares it again) or set data.prepared_dir to another folder")],
                         header=f"cannot reuse the prepared {layout} dataset")
    damage = shards.problems(_builder_dir(target, layout))
    if not damage:
      return target
    if not os.path.isdir(raw_dir):
      raise shards.damaged(target, damage, f"its raw data {raw_dir} is gone: restore it (a "
                           f"rerun prepares it again), or delete {target}")
    logging.warning("%s is damaged (%s: %s); preparing it again from %s", target,
                    *damage[0], raw_dir)
    overwrite = True

  if not os.path.isdir(raw_dir):  # Checked before anything is created.
    raise DatasetError([(raw_dir, "dataset directory does not exist")],
                       header=f"cannot prepare {layout} from {raw_dir}")
  examples, problems = isic.list_examples(layout, raw_dir)
  splits = isic.assign_splits(layout, examples, seed, **settings) if examples else {}
  plan = _Plan(layout, examples, splits, problems)
  if problems or not examples:  # bad listing: still decode everything, to report it all
    for split in plan.splits:
      for _ in tqdm.tqdm(plan(split, write=False), total=len(plan.by_split[split]),
                         desc=f"checking {layout} {split}"):
        pass
    raise DatasetError(problems or [(raw_dir, f"no {layout} images found")],
                       header=f"cannot prepare {layout} from {raw_dir}")
  with _PrepareLock(prepared_dir, layout):
    if os.path.exists(stats_path) and (not overwrite or damage and not shards.problems(
        _builder_dir(target, layout))):  # Another process prepared (or repaired) it meanwhile.
      return prepare(layout, raw_dir, prepared_dir, seed=seed, num_folds=num_folds, **settings)
    return _build(layout, raw_dir, prepared_dir, plan, splits, config, num_folds, seed, target)


class _PrepareLock:
  """Blocking fcntl.flock on prepared_dir/.<layout>.lock: one prepare of a layout at a time
  (released by the OS if the process dies). Holding it, temporary folders of an earlier
  killed prepare (.<layout>.tmp-*, <layout>.old-*) are stale and removed."""

  def __init__(self, prepared_dir, layout):
    self.prepared_dir, self.layout = prepared_dir, layout

  def __enter__(self):
    os.makedirs(self.prepared_dir, exist_ok=True)
    self._fd = os.open(os.path.join(self.prepared_dir, f".{self.layout}.lock"),
                       os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(self._fd, fcntl.LOCK_EX)
    for name in os.listdir(self.prepared_dir):
      if name.startswith((f".{self.layout}.tmp-", f"{self.layout}.old-")):
        shutil.rmtree(os.path.join(self.prepared_dir, name), ignore_errors=True)
        logging.warning("removed %s, left by an interrupted prepare",
                        os.path.join(self.prepared_dir, name))
    return self

  def __exit__(self, *exc):
    os.close(self._fd)


def _build(layout, raw_dir, prepared_dir, plan, splits, config, num_folds, seed, target):
  """Writes the dataset into a temporary folder beside `target`, then renames it there."""
  tmp = tempfile.mkdtemp(prefix=f".{layout}.tmp-", dir=prepared_dir)
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide a shared dataset.
  problems = plan.problems
  try:
    builder = _builder(layout, os.path.join(tmp, "tfds"))
    builder.plan = plan
    try:
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=raw_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    except Exception:
      if not problems:
        raise
    if problems:
      raise DatasetError(problems, header=f"cannot prepare {layout} from {raw_dir}")
    _write_metadata(tmp, layout, plan, splits, config, num_folds, seed, raw_dir)
    _swap_into_place(tmp, target)
    if "train" in plan.stats:
      logging.info("%s training split, gaze structures (thesis Table 1):\n%s", layout,
                   structure_table(plan.stats["train"].summary()))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return target


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _write_metadata(tmp, layout, plan, splits, config, num_folds, seed, raw_dir):
  train = plan.by_split.get("train", [])
  folds = isic.assign_folds(train, num_folds, seed) if len(train) >= num_folds else {}
  mean, std = plan.stats["train"].moments() if "train" in plan.stats else ([0.] * 3, [1.] * 3)
  stats = {
      "config": config, "raw_dir": os.path.abspath(raw_dir), "classes": list(isic.classes(layout)),
      "splits": {s: plan.stats[s].summary() for s in plan.splits}, "mean": mean, "std": std,
  }
  split_file = {"layout": layout, "seed": seed, "num_folds": num_folds,
                "settings": config["splits"],
                "splits": {s: sorted(e.id for e in plan.by_split[s]) for s in plan.splits},
                "folds": dict(sorted(folds.items()))}
  with open(os.path.join(tmp, "splits.json"), "w") as f:
    json.dump(split_file, f, indent=1)
  with open(os.path.join(tmp, "stats.json"), "w") as f:  # written last: marks completion
    json.dump(stats, f, indent=1)


def _swap_into_place(tmp, target):
  """Renames `tmp` to `target`; an existing `target` is removed only after that worked."""
  old = None
  if os.path.exists(target):
    old = tempfile.mkdtemp(prefix=os.path.basename(target) + ".old-", dir=os.path.dirname(target))
    os.rename(target, os.path.join(old, "data"))
  try:
    os.rename(tmp, target)
  except BaseException:
    if old:
      os.rename(os.path.join(old, "data"), target)
    raise
  if old:
    shutil.rmtree(old, ignore_errors=True)


class Source:
  """Random-access records of one split (grain RandomAccessDataSource protocol)."""

  def __init__(self, data_source, split):
    self._data_source = data_source
    self.split = split

  def __len__(self):
    return len(self._data_source)

  def __getitem__(self, index):
    return codec.decode(self._data_source[index], self.split)

  def __repr__(self):
    return f"Source(split={self.split!r}, len={len(self)})"


@dataclasses.dataclass
class Prepared:
  """A prepared dataset: `stats` (stats.json), `splits` (splits.json), `source(split)`."""
  path: str
  layout: str
  stats: dict
  splits: dict
  builder: object

  def source(self, split: str) -> Source:
    if split not in self.stats["splits"]:
      raise ValueError(f"{self.path} has no split {split!r}; it has {list(self.stats['splits'])}")
    return Source(self.builder.as_data_source(split=split), split)


def _builder_dir(path, layout):
  return os.path.join(path, "tfds", "dermjax_isic", layout, isic_builder.VERSION)


def load(prepared_dir: str, layout: str) -> Prepared:
  """The dataset `prepare(layout, ..., prepared_dir)` wrote; DatasetError (one line) when a
  shard is missing or damaged."""
  path = os.path.join(prepared_dir, layout)
  if not os.path.exists(os.path.join(path, "stats.json")):
    raise FileNotFoundError(f"No prepared {layout} dataset in {path}; run "
                            f"dermjax.data.prepare.prepare({layout!r}, raw_dir, {prepared_dir!r})")
  problems = shards.problems(_builder_dir(path, layout))
  if problems:
    raise shards.damaged(path, problems, f"delete {path} and rerun to prepare it again")
  with open(os.path.join(path, "stats.json")) as f:
    stats = json.load(f)
  with open(os.path.join(path, "splits.json")) as f:
    splits = json.load(f)
  builder = tfds.builder_from_directory(_builder_dir(path, layout))
  return Prepared(path, layout, stats, splits, builder)
