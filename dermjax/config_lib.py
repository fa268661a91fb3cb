"""Config defaults, the one experiment-table argument syntax, and loading configs by path.

Every `configs/<paper>.py` is an experiment table with `get_config(arg)`, where

  arg = "<row>[,<dataset>][,cpu|paper]"

parsed by `parse_arg` (tokens in any order): `row` is a row of the paper's table,
`dataset` one of the table's datasets, `paper` the paper's own scale and `cpu` (the
default) the same model CPU-sized for the synthetic data. No argument at all is the
table's default row, CPU-sized: the embedded default of `python -m dermjax.main`.

`base_config()` holds every field the trainer, data layer, optimiser and checkpointing
read (so each is settable from the command line); a table adds its model's fields.
"""

import dataclasses
import difflib
import importlib.util
import json
import os
from typing import Sequence

import ml_collections
from absl import logging

from dermjax import checkpoint
from dermjax import faults
from dermjax import fileio

SCALES = ("cpu", "paper")


@dataclasses.dataclass(frozen=True)
class TableArg:
  """A parsed experiment-table argument."""
  row: str
  dataset: str | None
  paper: bool


def parse_arg(arg, *, table: str, rows: Sequence[str], datasets: Sequence[str] = (),
              default_row: str | None = None) -> TableArg:
  """"<row>[,<dataset>][,cpu|paper]" -> TableArg; any bad token raises naming `table`.

  rows / datasets: the table's names (the first dataset is the default); default_row:
  the row of an argument without one (default: rows[0]).
  """
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  found_rows = [t for t in tokens if t in rows]
  found_datasets = [t for t in tokens if t in datasets]
  scales = [t for t in tokens if t in SCALES]
  unknown = [t for t in tokens if t not in (*rows, *datasets, *SCALES)]
  if unknown or len(found_rows) > 1 or len(found_datasets) > 1 or len(scales) > 1:
    nearest = [n for t in unknown for n in difflib.get_close_matches(t, rows, n=1)]
    problem = (f"unknown {unknown}" + (f"; did you mean {nearest[0]!r}?" if nearest else "")
               if unknown else "more than one row, dataset or scale")
    raise ValueError(
        f"{table}: bad argument {arg!r} ({problem}); expected <row>[,<dataset>][,cpu|paper] "
        f"with row in {list(rows)}" + (f", dataset in {list(datasets)}" if datasets else ""))
  row = found_rows[0] if found_rows else (default_row or rows[0])
  dataset = found_datasets[0] if found_datasets else (datasets[0] if datasets else None)
  return TableArg(row=row, dataset=dataset, paper=scales == ["paper"])


def set_fields(config: ml_collections.ConfigDict, fields: dict) -> ml_collections.ConfigDict:
  """Sets {"section.sub.field": value} on `config` (a table row's overrides); returns it."""
  for path, value in fields.items():
    *parents, name = path.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def data_config() -> ml_collections.ConfigDict:
  """config.data defaults (the thesis's ISIC 2017 setting); experiment configs override."""
  c = ml_collections.ConfigDict()
  # Raw ISIC directory; None -> synthetic data. (FieldReferences: settable from the CLI.)
  c.dir = ml_collections.FieldReference(None, field_type=str)
  c.layout = "isic2017"
  c.prepared_dir = ml_collections.FieldReference(None, field_type=str)  # None: <dir>/prepared
  c.synthetic_dir = ml_collections.FieldReference(None, field_type=str)  # None: <workdir>/synthetic_<layout>
  c.synthetic_num_images = None   # {split: count} for the synthetic set; None: its default.
  # "easy" | "hard" | a structure strength in [0, 1] as a string (dermjax.data.synthetic).
  c.synthetic_difficulty = "easy"
  # Whether the synthetic ISIC 2020 age carries the melanoma signal; None: on "easy" only.
  c.synthetic_age_signal = ml_collections.FieldReference(None, field_type=bool)
  # "none" | "blank" (evidence painted over) | "only" (the rest of the lesion painted over):
  # checks that the label lives in the evidence (dermjax.data.loader.ablate_evidence).
  c.evidence_ablation = "none"
  c.image_size = 224
  c.resize_size = 256
  c.crop = "resize_center_crop"   # | "center_fraction" (dermjax.data.loader.CROPS)
  c.crop_fraction = 0.8
  # > 0: every example also carries its crop box resampled to source_size x source_size
  # ("source_image", uint8; the same augmentation on device) for models that crop from a
  # higher-resolution copy (MASLL's model.crop_source = "source"); 0: none.
  c.source_size = 0
  # Input normalisation (dermjax/data/normalization.py): "dataset" (the training split's
  # mean/std, stats.json) | "imagenet" (torchvision's constants) | "fixed" (the two fields
  # below, 0-1 pixel scale as torchvision's Normalize; the defaults give plain 0-1 pixels).
  c.normalization = "dataset"
  c.normalization_mean = (0.0, 0.0, 0.0)
  c.normalization_std = (1.0, 1.0, 1.0)
  c.target = "melanoma"           # | "seborrheic_keratosis" ("keratosis") | "multiclass" (data/loader.py TARGETS)
  c.batch_size = 8                # global, over all processes and devices.
  c.eval_batch_size = 8
  c.num_workers = 0               # grain worker processes (0 = threads in this process).
  c.num_threads = 4               # reader threads per process / worker.
  c.prefetch = 2                  # batches buffered per worker.
  c.sampling = "none"             # | "oversample" | "balanced"
  c.oversample_factor = 4
  c.passes_per_epoch = 1          # passes over the training split per epoch (AttnMel's num_aug).
  c.augment = ml_collections.ConfigDict(dict(
      rotation="uniform",          # | "k90" (multiples of 90 degrees, exact) | "none".
      max_rotation_deg=ml_collections.FieldReference(180.0, field_type=object),  # or "any".
      hflip=True, vflip=True,
      zoom=(0.8, 1.0),            # random crop side as a fraction of the image, or None.
      fill="reflect",             # | "constant" (zeros) outside the rotated image.
      # Model input side C < image_size: a random C x C window in training, the central one
      # at evaluation, no resampling (AttnMel's authors' 224 of 256); None: the whole image.
      crop_size=ml_collections.FieldReference(None, field_type=int)))
  c.fold = ml_collections.FieldReference(None, field_type=int)  # None: official validation.
  c.num_folds = 5
  c.split_seed = 0                # carves derived validation/test splits and folds.
  # "carved_test" | "cv" (folds cover the whole training set, fold k is the test split);
  # validation split carved out of training (2016/2019/2020): None = the layout's 1/8, or
  # 1/k. Both are recorded with the prepared dataset (dermjax.data.isic.splits).
  c.protocol = "carved_test"
  c.validation_fraction = ml_collections.FieldReference(None, field_type=float)
  c.seed = 0                      # training order (sampling).
  return c


def base_config() -> ml_collections.ConfigDict:
  """A complete config with the shared defaults; a table fills model/loss fields."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config()

  config.model = ml_collections.ConfigDict()
  config.model.name = ""
  config.model.num_classes = 1            # 1: sigmoid melanoma score; >1: softmax classes.
  config.model.dtype = "float32"          # compute dtype ("bfloat16" for mixed precision).
  # ImageNet weights (.pth / .safetensors / converted dir) or a dermjax workdir (its best
  # checkpoint), grafted into pretrained_targets (dermjax.weights.apply_pretrained).
  config.model.pretrained = ml_collections.FieldReference(None, field_type=str)
  config.model.pretrained_arch = "vgg16_bn"
  config.model.pretrained_format = "auto"   # "auto" | "torchvision" | "timm" key names.
  config.model.pretrained_targets = ml_collections.ConfigDict()  # submodule -> path in checkpoint.
  # A row with pretrained_targets grafts weights and stops at start-up when model.pretrained
  # is unset (dermjax.pretrained.check_pretrained), unless from_scratch (the CPU rows' default:
  # cpu_sized) says that training from a random initialisation is meant.
  config.model.from_scratch = False
  # Rows that graft a trained dermjax run instead of ImageNet weights: the table argument
  # of that run's row (e.g. "configs/cin.py:lesion_attention"); None: ImageNet weights.
  config.model.pretrained_run = ml_collections.FieldReference(None, field_type=str)

  config.loss = ml_collections.ConfigDict()
  config.loss.focal_gamma = 2.0

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"              # "adam" | "sgd"
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.momentum = 0.9             # sgd only.
  config.optim.nesterov = False           # sgd only.
  config.optim.weight_decay = 0.0         # L2 added to the gradient, as torch's weight_decay.
  config.optim.learning_rate = 1e-4       # for params matching no group below.
  # Per-module learning rates: group -> (regex over "/"-joined param path, learning rate).
  # A rate of 0 freezes the group (no update; models also stop the backward pass there).
  config.optim.groups = ml_collections.ConfigDict()
  config.optim.decay_every_epochs = 0     # >0: multiply rates by decay_factor every N epochs.
  config.optim.decay_factor = 0.1

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 20
  config.train.max_steps = -1             # >0 caps the run (smoke tests).
  config.train.log_every_steps = 10
  config.train.eval_every_epochs = 1
  config.train.checkpoint_metric = "validation/loss"   # saved when it improves.
  config.train.checkpoint_mode = "min"
  config.train.keep_best = ("validation/auc",)         # also keep the best by these (max).
  config.train.distributed = False        # jax.distributed.initialize() for multi-host.
  config.train.save_config = True         # write <workdir>/config.json.
  # XLA:CPU convolutions: "ynnpack" | "eigen" | "" ($DERMJAX_XLA_CPU_CONV, else
  # dermjax.xla_cpu.DEFAULT); applied before JAX starts (dermjax/xla_cpu.py).
  config.train.xla_cpu_conv = ""
  # Checkpoint `latest` every N steps and every M minutes of training (besides epoch ends
  # and the last step; <= 0 turns one off; minutes only on a single host). 500 steps is
  # ~1-3 minutes of a paper-scale model on one GPU; the minutes bound a slow machine's loss.
  config.train.checkpoint_every_steps = 500
  config.train.checkpoint_every_minutes = 10.0
  # Divergence guard: a step whose loss or global gradient norm is non-finite or above
  # these bounds (<= 0: no bound) is never applied. "stop": the run stops there (exit
  # status 3); "skip": the update is dropped and counted, and the run stops after
  # max_skipped_in_a_row such steps in a row.
  config.train.on_nonfinite = "stop"
  config.train.max_skipped_in_a_row = 10
  config.train.max_loss = 1e6
  config.train.max_grad_norm = 1e9

  config.eval = ml_collections.ConfigDict()
  config.eval.splits = ("validation", "test")
  config.eval.num_visualizations = 8      # explanation PNGs per split.
  config.eval.tta = 1                     # 8: average the 8 flips/transposes (dermjax.evaluation).
  # Explanation faithfulness (only where the data have evidence masks, dermjax.evaluation):
  # splits scored, deletion-curve steps (0: no curves) and how many positive images get
  # curves (each step is one forward pass per map), the pointing game's tolerance in cells.
  config.eval.explanation_splits = ("test",)
  config.eval.explanation_deletion_steps = 8
  config.eval.explanation_deletion_images = 32
  config.eval.explanation_tolerance = 0   # cells; 1 covers most of a 4 x 4 CPU-sized map
  # ISIC challenge submission CSV per evaluated split (dermjax.submission.FORMATS): "auto"
  # (the one of data.layout, if any), a format name, or "" for none.
  config.eval.submission = "auto"
  return config


# Fields a resumed run may change without --resume_with_changed_config: how long it runs,
# how often it evaluates / logs / saves, and host-side speed knobs that do not change the
# data order or the numbers (dermjax.input_pipeline: order independent of workers/threads).
RUN_LENGTH_FIELDS = (
    "train.num_epochs", "train.max_steps", "train.eval_every_epochs", "train.log_every_steps",
    "train.checkpoint_every_steps", "train.checkpoint_every_minutes", "train.save_config",
    "train.xla_cpu_conv",
    "eval.splits", "eval.num_visualizations", "eval.explanation_deletion_steps",
    "eval.explanation_tolerance", "eval.explanation_splits", "eval.explanation_deletion_images",
    "data.num_workers", "data.num_threads", "data.prefetch", "data.eval_batch_size",
    "model.from_scratch",   # only the start-up weights check reads it
)


def cpu_sized(config: ml_collections.ConfigDict, *, image_size: int = 64, batch_size: int = 4,
              num_epochs: int = 1) -> ml_collections.ConfigDict:
  """The `cpu` scale the tables share: the whole image at image_size (resize_size equal),
  one batch size for training and evaluation, few epochs, a log line every step, and no
  ImageNet weights needed (model.from_scratch)."""
  config.model.from_scratch = True
  config.data.image_size = config.data.resize_size = image_size
  config.data.batch_size = config.data.eval_batch_size = batch_size
  config.train.num_epochs = num_epochs
  config.train.log_every_steps = 1
  config.eval.num_visualizations = 4
  return config


def flatten(tree, prefix=""):
  """Nested dict -> {"a.b.c": leaf} (tuples as lists)."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def config_dict(config) -> dict:
  """A ConfigDict as the plain JSON-able dict stored with checkpoints (tuples -> lists)."""
  return json.loads(config.to_json_best_effort())


def config_differences(stored: dict, current: dict, ignore=RUN_LENGTH_FIELDS,
                       defaults: dict | None = None) -> list:
  """["field: stored -> current", ...] for dotted fields that differ (JSON dicts of
  configs, see config_dict), leaving out `ignore` and its sub-fields. A field absent from
  `stored` whose current value is its default in `defaults` (a config_dict, e.g. of
  base_config()) is no difference: the field is newer than the checkpoint, and its default
  is the behaviour the checkpoint was trained with."""
  a, b = flatten(stored), flatten(current)
  base = flatten(defaults or {})
  skip = lambda k: any(k == f or k.startswith(f + ".") for f in ignore)
  missing = object()
  newer = lambda k: k not in a and k in base and b.get(k, missing) == base[k]
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b))
          if not skip(k) and not newer(k) and a.get(k, missing) != b.get(k, missing)]


def check_resume_config(config, stored_meta, allow_changed: bool):
  """Raises RunError listing the fields that differ from the config the checkpoint was
  trained with (run-length fields excepted), unless `allow_changed`."""
  if not stored_meta or "config" not in stored_meta:
    return []
  differences = config_differences(stored_meta["config"], config_dict(config),
                                   defaults=config_dict(base_config()))
  if differences and not allow_changed:
    raise faults.RunError(
        f"the checkpoint at step {stored_meta.get('step')} was trained with another config: "
        + "; ".join(differences) + ". Rerun with that config, use another --workdir, or pass "
        "--resume_with_changed_config", exit_code=2)
  for line in differences:
    logging.warning("resuming with a changed config field: %s", line)
  return differences


def record_config(config, workdir, resumed_step, changed):
  """Writes <workdir>/config.json (atomically); when a resume changed the config the
  previous file is kept as config.before_step_<step>.json."""
  path = os.path.join(workdir, "config.json")
  if changed and os.path.exists(path):
    os.replace(path, os.path.join(workdir, f"config.before_step_{resumed_step}.json"))
  fileio.write_text(path, config.to_json_best_effort(indent=2))


def config_module(path: str):
  """The config file at `path` as a module (configs/ is no package, so tests and tools load
  experiment tables by path)."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"dermjax_configs_{name}", path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"no config file at {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str, arg=None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`."""
  return config_module(path).get_config(arg)


def _merge_json(node: ml_collections.ConfigDict, values: dict, path: str = ""):
  """Sets JSON `values` on `node` in place: fields the node has keep their declared types
  (FieldReferences stay references) unless the saved value has another type, JSON lists
  become tuples, new fields are added."""
  for key, value in values.items():
    if isinstance(value, dict):
      if key in node and isinstance(node[key], ml_collections.ConfigDict):
        _merge_json(node[key], value, f"{path}{key}.")
        continue
      if key not in node or node[key] is None:
        node[key] = _merge_json(ml_collections.ConfigDict(), value, f"{path}{key}.")
        continue
    if isinstance(value, list):
      value = _tuples(value)
    try:
      node[key] = value
    except TypeError:  # Saved before the field got its type (e.g. a bool become a mode name):
      del node[key]    # the value the run was trained with wins.
      node[key] = value
  return node


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """The ConfigDict a run saved as JSON (`config.to_json_best_effort()`), rebuilt on
  base_config() so shared fields keep their types; model fields are added as saved."""
  return _merge_json(base_config(), json.loads(text))


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of a dermjax run: <workdir>/config.json (written by the trainer), else the
  one its checkpoint stores. Raises RunError (exit status 2) saying what the folder lacks."""
  if not os.path.isdir(workdir):
    raise faults.RunError(f"--workdir {workdir} does not exist (give the folder of a run of "
                          "python -m dermjax.main)", exit_code=2)
  path = os.path.join(workdir, "config.json")
  if os.path.isfile(path):
    try:
      with open(path) as f:
        return config_from_json(f.read())
    except (ValueError, TypeError, KeyError) as e:
      raise faults.RunError(f"{path} is not a readable run config ({' '.join(str(e).split())})",
                            exit_code=2) from None
  try:
    stored = checkpoint.run_meta(workdir).get("config")
  except FileNotFoundError:
    stored = None
  if not stored:
    raise faults.RunError(f"{workdir} is not a dermjax run: it has no config.json and no "
                          "checkpoint (train one with python -m dermjax.main --workdir=...)",
                          exit_code=2)
  logging.warning("%s has no config.json: using the config stored with its checkpoint", workdir)
  return _merge_json(base_config(), stored)
