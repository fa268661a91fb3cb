"""Model registry and the model contract: `config.model.name` -> the paper module that runs it.

A paper is a folder `dermjax/models/<paper>/` whose `__init__.py` is a *model module*: it
provides the hooks below (`build` and `loss` required, the rest optional), and the one
trainer (`dermjax.train`) runs it. Adding a paper = that folder + one experiment table
`configs/<paper>.py` + one line in MODELS; its table rows then join tests/test_contract.py.

Batch (`dermjax.data.schema.batch_spec(config)` lists names, shapes, dtypes): the host batch
is uint8 images/masks plus labels, metadata and bookkeeping; inside the jitted step
`dermjax.data.augment` turns it into the model batch the hooks see:

  image [B, S, S, 3] float (normalised, augmented in training), masks [B, S, S, 1+A] float32,
  has_lesion_mask [B] / has_attributes [B] float32, label [B] int32 (config.data.target),
  melanoma [B] int32, age [B] float32 (NaN missing), sex [B] / site [B] int32 (-1 missing),
  valid [B] float32 (0 for padding rows), index [B] int32, evidence_mask [B, S, S] /
  has_evidence_mask [B] float32 (synthetic hard preset; for evaluation only, models ignore them),
  and with config.data.source_size R > 0 source_image [B, R, R, 3] float (the same crop at R
  px, normalised and augmented like image; MASLL's crop_source "source").

Hooks (ModelModule below spells out the signatures):

  build(config) -> flax.linen.Module
      `module.apply(variables, batch, train=bool)` returns a dict of outputs. In training
      the trainer passes rngs {"dropout", "sample"}; "sample" is for stochastic choices of
      the model itself, e.g. pairing each image with another of the batch (CIN: pairs are
      formed on device from the shuffled batch, so the input pipeline is unchanged). At
      evaluation no rngs are passed: outputs must be deterministic.
      outputs["logits"] [B, K] (K = 1: sigmoid melanoma score; K > 1: softmax over
      config.data.target's classes) is optional: the trainer computes diagnosis metrics,
      predictions and ROC curves only when it is there (a stage-1 lesion segmenter has none).
  loss(outputs, batch, config, stats) -> (scalar loss, {name: scalar})
      pure; `stats` is loss_stats' output. Padding rows (valid == 0) must not count.
  loss_stats(data_stats, config) -> {name: array}          optional
      split-level constants from the prepared dataset's stats.json (e.g. class weights).
  eval_arrays(outputs, batch, config) -> {name: [B, ...]}   optional, inside the jitted eval
      small per-example arrays gathered over a split for `report` (reserved names: logits,
      label, melanoma, valid, index).
  report(arrays, config) -> {name: number | nested dict}   optional, on the host
      the model's own split metrics (segmentation mAP, attention Jaccard, ...), written
      under "report" in results/<split>.json.
  explain(outputs, batch, images, ids, config, out_dir)     optional, on the host
      writes per-example explanation files (PNG + arrays) for the first examples of a split.
  saliency(outputs, batch, config) -> {name: [B, h, w]}      optional, inside a jitted eval
      the model's spatial explanations as maps over its input image (any h, w; higher =
      more attended; a map over a crop placed back on the image, e.g. crop.uncrop), {} for
      a row without one. Where a split has evidence masks (synthetic `hard` preset),
      dermjax.evaluation scores every map against them (dermjax.metrics.faithfulness) under
      "explanation" in results/<split>.json. Models never read the batch's evidence_mask.
  train_flops(config) -> float | None                       optional
      analytic FLOPs per image of one train step (scripts/profile_step.py's MFU).

Pretrained parts: `config.model.pretrained` is an ImageNet checkpoint or a dermjax workdir
(its best checkpoint); `config.model.pretrained_targets` maps this model's submodules to
paths in it (dermjax.weights.apply_pretrained). An optimiser group with rate 0 freezes a
grafted part (a two-stage method is two table rows chained by one flag).

The registry is a fixed table (no import-time registration), resolved lazily so that
importing one model never imports the others.
"""

import importlib
from types import ModuleType
from typing import Any, Callable, Protocol, runtime_checkable

MODELS = {
    # Gaze sequences (Esteve-Cogollos 2020) and its Table 3 ablations.
    "gaze": "dermjax.models.gaze",
    # AttnMel-CNN (Yan et al. 2019) and its Mel-CNN ablation.
    "attnmel": "dermjax.models.attnmel",
    # VGG-16 / VGG-16-GAP baselines (AttnMel Tables 1-3, gaze Table 3).
    "vgg16": "dermjax.models.baselines",
    # CIN (Liu et al. 2020) stage 1: the lesion area attention module (a segmenter, no logits).
    "cin_lesion": "dermjax.models.cin.lesion",
    # CIN stage 2 and its Table 1 ablations (baseline, A, F, D, A+F, A+F+D).
    "cin": "dermjax.models.cin",
    # MASLL (Wang et al.): global + SLL-cropped local branch, WFI fusion.
    "masll": "dermjax.models.masll",
    # Any backbone + global average pooling + dense (MASLL Table I's ResNet101 / DenseNet121).
    "gap_classifier": "dermjax.models.baselines.gap_classifier",
    # ZooME (Xing et al.): Zoom-SE + metadata embedding, its Table I-II ablations and AlexNet.
    "zoome": "dermjax.models.zoome",
}

REQUIRED_HOOKS = ("build", "loss")
OPTIONAL_HOOKS = ("loss_stats", "eval_arrays", "report", "explain", "saliency", "train_flops")


@runtime_checkable
class ModelModule(Protocol):
  """The hooks of a model module (optional ones may be absent; see the module docstring)."""

  def build(self, config) -> Any: ...   # -> flax.linen.Module
  def loss(self, outputs: dict, batch: dict, config, stats: dict) -> tuple[Any, dict]: ...


OptionalHooks = {
    "loss_stats": Callable[[dict, Any], dict],
    "eval_arrays": Callable[[dict, dict, Any], dict],
    "report": Callable[[dict, Any], dict],
    "explain": Callable[[dict, dict, Any, list, Any, str], None],
    "saliency": Callable[[dict, dict, Any], dict],
    "train_flops": Callable[[Any], "float | None"],
}


def get(name: str) -> ModuleType:
  """The model module registered as `name`; raises with the known names otherwise."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}")
  module = importlib.import_module(MODELS[name])
  missing = [hook for hook in REQUIRED_HOOKS if not callable(getattr(module, hook, None))]
  if missing:
    raise TypeError(f"model module {module.__name__} lacks the required hooks {missing}")
  return module
