"""The evaluation half of a run: a split's losses, diagnosis metrics, model report, saved
predictions and explanations, written under a workdir:

  workdir/results/<split>.json       final metrics (losses, diagnosis, report, step, and
                                     "explanation" where the split has evidence masks;
                                     validation: "thresholds" chosen on it; every other
                                     split: "diagnosis_at_validation_threshold")
  workdir/results/roc_<split>.{csv,png}  the ROC curve of the diagnosis score (metrics.roc)
  workdir/predictions/<split>.npz    ids, scores, logits, labels, melanoma
  workdir/explanations/<split>/      the model's explain() output
  workdir/predictions/<split>_<format>.csv   ISIC challenge submission (dermjax.submission)
  workdir/results/normalization.json the run's preprocessing constants (normalisation mode,
                                     mean, std; classes)

Explanation faithfulness: where the prepared data carry evidence masks (the synthetic
`hard` preset) and the model has the `saliency` hook, every map it returns is scored by
dermjax.metrics.faithfulness on the split's positive (melanoma) images with an evidence
mask: pointing game (config.eval.explanation_tolerance cells), energy share vs its chance
level, and deletion-curve AUC of the melanoma probability (config.eval.
explanation_deletion_steps steps, 0 skips the curves; on the first
explanation_deletion_images such images) against a random-order curve; for the splits in
config.eval.explanation_splits (default test only: the curves cost a forward per step).

Validation-chosen thresholds: the validation split is evaluated first; on its melanoma
score (diagnosis.choose_thresholds) it picks the Youden threshold and the highest one with
sensitivity >= .80 ("thresholds" in validation.json), and every other split reports its
accuracy / sensitivity / specificity / balanced accuracy at those under
"diagnosis_at_validation_threshold": {rule: {threshold, ...}}, so no test number is chosen on
test. Without a validation split in the call, `thresholds` (e.g. the run's own
results/validation.json, run_thresholds) are applied.

Test-time augmentation (config.eval.tta = 8): dermjax.tta. A finished run (config, model,
best checkpoint, normalisation) for dermjax.predict and dermjax.evaluate: dermjax.runs.

Used by the trainer (dermjax.train, at the end of training) and by dermjax.evaluate (a
finished run's checkpoint on any split or dataset); the steps it runs are dermjax.steps'.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from PIL import Image

from dermjax import fileio
from dermjax import steps
from dermjax import runs
from dermjax import submission
from dermjax import tta
from dermjax import writers
from dermjax.data import schema
from dermjax.metrics import diagnosis, faithfulness, roc


# Class names whose probability is the "melanoma score" of a multiclass model.
MELANOMA_CLASS_NAMES = ("melanoma", "MEL", "malignant")


def _gather(tree):
  """Global (possibly multi-host) arrays -> numpy on every host."""
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _melanoma_class(class_names):
  hits = [i for i, n in enumerate(class_names or ()) if n in MELANOMA_CLASS_NAMES]
  return hits[0] if hits else None


def run_eval(eval_step, state, batches):
  """Runs a split; returns (mean losses, {name: np.ndarray over valid rows})."""
  sums, chunks = None, []
  for batch in batches:
    batch_sums, arrays = eval_step(state, batch)
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    chunks.append(_gather(arrays))
  if sums is None:
    raise ValueError("evaluation split has no batches")
  sums = jax.tree.map(float, _gather(sums))
  count = max(sums.pop("count"), 1e-12)
  losses = {k: v / count for k, v in sums.items()}
  arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  keep = arrays["valid"] > 0
  return losses, {k: v[keep] for k, v in arrays.items()}


def split_metrics(losses, arrays, config, model_lib, class_names=None):
  """Diagnosis metrics (+ the model's report) of one evaluated split.

  class_names: names of the label values (Datasets.class_names); for K > 1 the melanoma
  score is the probability of the class named melanoma / MEL / malignant.
  """
  result = {"losses": losses}
  if "logits" in arrays:
    logits, labels = arrays["logits"], arrays["label"]
    known = labels >= 0
    if logits.shape[1] == 1 or class_names is None or len(class_names) != logits.shape[1]:
      class_names = None
    result["diagnosis"] = diagnosis.diagnosis_metrics(
        logits[known], labels[known], melanoma=arrays["melanoma"][known],
        melanoma_class=_melanoma_class(class_names),
        class_names=None if class_names is None else list(class_names))
  report = getattr(model_lib, "report", None)
  if report is not None:
    result["report"] = report(arrays, config)
  return result


def scalar_summaries(prefix, result):
  """{prefix/name: float} of the scalar entries of a split result (for TensorBoard)."""
  out = {f"{prefix}/{k}": v for k, v in result["losses"].items()}
  for section in ("diagnosis", "report"):
    for k, v in result.get(section, {}).items():
      if _is_number(v):
        out[f"{prefix}/{k}" if section == "diagnosis" else f"{prefix}/{section}/{k}"] = float(v)
  for section in ("explanation", "thresholds", diagnosis.AT_VALIDATION):
    out.update(_numeric_leaves(f"{prefix}/{section}", result.get(section, {})))
  return out


def threshold_sections(arrays, class_names, split, thresholds) -> dict:
  """diagnosis.threshold_sections of an evaluated split's melanoma score ({} without one)."""
  if "logits" not in arrays:
    return {}
  scored = roc.curve_inputs(arrays["logits"], arrays["label"], arrays["melanoma"],
                            _melanoma_class(class_names))
  return {} if scored is None else diagnosis.threshold_sections(*scored, split, thresholds)


def run_thresholds(workdir) -> dict | None:
  """The validation-chosen thresholds of a finished run (its results/validation.json), or
  None when it has none."""
  path = os.path.join(workdir, "results", "validation.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f).get("thresholds")


def _numeric_leaves(prefix, tree):
  """{prefix/a/b: float} of a nested result section's numbers ("maps" levels dropped)."""
  out = {}
  for k, v in tree.items():
    key = prefix if k == "maps" else f"{prefix}/{k}"
    if isinstance(v, dict):
      out.update(_numeric_leaves(key, v))
    elif _is_number(v):
      out[key] = float(v)
  return out


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def explain_split(model_lib, module, config, state, datasets, split, loss_stats, out_dir):
  """Calls model_lib.explain on the first config.eval.num_visualizations examples of `split`.

  explain(outputs, batch, images, ids, config, out_dir) gets numpy outputs, the host batch
  (uint8 image, masks, labels, ...) and its uint8 images, rows with valid == 0 removed.
  """
  explain = getattr(model_lib, "explain", None)
  remaining = int(config.eval.num_visualizations)
  if explain is None or remaining <= 0:
    return
  step = jax.jit(steps.make_eval_step(module, model_lib, config, loss_stats, datasets.mean,
                                      datasets.std, with_outputs=True))
  os.makedirs(out_dir, exist_ok=True)
  for batch in datasets.eval(split):
    _, arrays, outputs = step(state, batch)
    arrays, outputs, host_batch = _gather((arrays, outputs, batch))
    keep = np.flatnonzero(arrays["valid"] > 0)[:remaining]
    if keep.size == 0:
      break
    ids = [datasets.ids[split][int(i)] for i in arrays["index"][keep]]
    if jax.process_index() == 0:
      rows = lambda x: x[keep]
      explain(jax.tree.map(rows, outputs), jax.tree.map(rows, host_batch),
              host_batch["image"][keep], ids, config, out_dir)
    remaining -= keep.size
    if remaining <= 0:
      break


def has_evidence(datasets) -> bool:
  """Whether the prepared data carry evidence masks (stats.json counts them per split)."""
  return any(s.get("num_with_evidence", 0) for s in datasets.stats.get("splits", {}).values())


def positive_score(logits, melanoma_class=None):
  """logits [B, K] -> [B] melanoma probability: sigmoid for K = 1, else the softmax of
  `melanoma_class` (class 1 when None)."""
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    return jax.nn.sigmoid(logits[:, 0])
  return jax.nn.softmax(logits, -1)[:, 1 if melanoma_class is None else melanoma_class]


def explanation_split(model_lib, module, config, state, datasets, split):
  """The "explanation" section of results/<split>.json (module docstring), or None when
  the model has no saliency maps, the data no evidence masks, or `split` is not in
  config.eval.explanation_splits.

  Pass 1 scores every map of every example against its evidence (one forward per batch);
  pass 2 runs the deletion curves on the first config.eval.explanation_deletion_images
  positive images only, re-batched on the host (steps - 1 forwards per map and batch)."""
  saliency = getattr(model_lib, "saliency", None)
  if (saliency is None or not has_evidence(datasets)
      or split not in tuple(config.eval.get("explanation_splits", ("test",)))):
    return None
  mean, std = np.asarray(datasets.mean, np.float32), np.asarray(datasets.std, np.float32)
  num_steps = int(config.eval.get("explanation_deletion_steps", 8))
  tolerance = int(config.eval.get("explanation_tolerance", 0))
  budget = int(config.eval.get("explanation_deletion_images", 32))
  melanoma_class = _melanoma_class(datasets.class_names)

  def model(state, host_batch):
    batch = steps.preprocess(host_batch, state.rng, config, mean, std, train=False)
    variables = steps.model_variables(state.params, state.batch_stats)
    apply = lambda b: module.apply(variables, b, train=False)
    outputs = apply(batch)
    return batch, apply, outputs, saliency(outputs, batch, config)

  @jax.jit
  def map_step(state, host_batch):
    batch, _, _, maps = model(state, host_batch)
    arrays = faithfulness.map_metrics(maps, batch["evidence_mask"], tolerance)
    arrays["keep"] = ((batch["valid"] > 0) & (batch["has_evidence_mask"] > 0)
                      & (batch["melanoma"] == 1))
    return arrays

  @jax.jit
  def deletion_step(state, host_batch):
    batch, apply, _, maps = model(state, host_batch)
    score = lambda images: positive_score(apply(with_images(batch, images))["logits"],
                                          melanoma_class)
    key = jax.random.fold_in(jax.random.PRNGKey(0), jnp.max(batch["index"]))
    return faithfulness.deletion_metrics(maps, batch, score, steps=num_steps, key=key)

  chunks, chosen, scored = [], [], None
  for batch in datasets.eval(split):
    if scored is None:  # deletion curves need the model's score
      scored = "logits" in jax.eval_shape(lambda s, b: model(s, b)[2], state, batch)
    arrays = _gather(map_step(state, batch))
    if len(arrays) == 1:  # only "keep": this row has no saliency maps
      return None
    chunks.append(arrays)
    rows = np.flatnonzero(arrays["keep"])[:max(budget - sum(len(c["valid"]) for c in chosen), 0)]
    if rows.size and scored and num_steps > 0:
      chosen.append({k: v[rows] for k, v in _gather(batch).items()})
  arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  keep = arrays.pop("keep")
  summary = faithfulness.summarize(arrays, keep)
  section = {"images": "melanoma == 1 with an evidence mask",
             "num_images": summary.pop("num_images"), "pointing_tolerance_cells": tolerance,
             "maps": summary}
  if chosen:
    rows = {k: np.concatenate([c[k] for c in chosen]) for k in chosen[0]}
    size, n = int(config.data.eval_batch_size), len(rows["valid"])
    pad = schema.padding_batch(int(config.data.image_size), -n % size,
                               source_size=int(config.data.get("source_size", 0)))
    rows = {k: np.concatenate([v, pad[k]]) for k, v in rows.items()}
    curves = [_gather(deletion_step(state, {k: v[i:i + size] for k, v in rows.items()}))
              for i in range(0, len(rows["valid"]), size)]
    curves = {k: np.concatenate([c[k] for c in curves])[:n] for k in curves[0]}
    deletion = faithfulness.summarize(curves, np.ones(n, bool))
    section.update(deletion_steps=num_steps, deletion_images=deletion.pop("num_images"))
    section["random_deletion"] = deletion.pop(faithfulness.RANDOM)
    for name, entry in deletion.items():
      section["maps"].setdefault(name, {}).update(entry)
  return section


def with_images(batch, images):
  """The model batch with `images` [B, S, S, 3] in place of its image (deletion curves); a
  source_image [B, R, R, 3] gets the same change, resized to R px, so a model that crops
  from it (MASLL's crop_source "source") sees the deletion too."""
  out = {**batch, "image": images}
  if "source_image" in batch:
    source = batch["source_image"]
    out["source_image"] = source + jax.image.resize(images - batch["image"], source.shape,
                                                    "linear")
  return out


def _pngs(directory, prefix):
  """{prefix/name: uint8 RGB image} of the PNGs in `directory` (for TensorBoard)."""
  if not os.path.isdir(directory):
    return {}
  return {f"{prefix}/{name[:-4]}": np.asarray(Image.open(os.path.join(directory, name)).convert("RGB"))
          for name in sorted(os.listdir(directory)) if name.endswith(".png")}


def evaluate_splits(config, workdir, state, datasets, model_lib, module, loss_stats, eval_step,
                    splits, *, step, writer=None, thresholds=None) -> dict:
  """Evaluates `state` on each of `splits` (validation first); writes results, predictions
  and explanations under `workdir` (layout above) and, with a writer, final_<split>/*
  summaries at `step`. thresholds: {rule: value} applied to the non-validation splits when
  `splits` has no validation split. Returns {split: result}."""
  if int(config.eval.get("tta", 1)) > 1:
    eval_step = jax.jit(steps.make_eval_step(tta.TTAModule(module, int(config.eval.tta)), model_lib,
                                             config, loss_stats, datasets.mean, datasets.std))
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, runs.NORMALIZATION), {
        "mode": datasets.normalization["mode"], "mean": datasets.mean, "std": datasets.std,
        "class_names": list(datasets.class_names),
        "layout": datasets.layout, "target": config.data.target})
  fmt = submission.format_for(config.eval.get("submission", ""), config.data.layout)
  results = {}
  for split in sorted(splits, key=lambda s: s != "validation"):  # its thresholds go first
    num_batches = -(-datasets.num_examples[split] // int(config.data.eval_batch_size))
    losses, arrays = run_eval(eval_step, state,
                              _progress(datasets.eval(split), num_batches, f"evaluating {split}"))
    result = split_metrics(losses, arrays, config, model_lib, datasets.class_names)
    result.update(threshold_sections(arrays, datasets.class_names, split, thresholds))
    thresholds = result.get("thresholds", thresholds)
    result.update(step=step, checkpoint_metric=config.train.checkpoint_metric)
    if int(config.eval.get("tta", 1)) > 1:
      result["tta"] = int(config.eval.tta)
    explanation = explanation_split(model_lib, module, config, state, datasets, split)
    if explanation is not None:
      result["explanation"] = explanation
      logging.info("%s explanation faithfulness: %s", split, fileio.to_json(explanation))
    results[split] = result
    if writer is not None:
      writer.write_scalars(step, scalar_summaries(f"final_{split}", result))
    logging.info("final %s: %s", split, fileio.to_json(result.get("diagnosis", result.get("report"))))
    if jax.process_index() == 0:
      fileio.write_json(os.path.join(workdir, "results", f"{split}.json"), result)
    if jax.process_index() == 0 and "logits" in arrays:
      ids = datasets.ids[split]
      logits = arrays["logits"]
      scores = diagnosis.probabilities(logits).astype(logits.dtype)
      fileio.savez(os.path.join(workdir, "predictions", f"{split}.npz"),
                   ids=np.asarray([ids[i] for i in arrays["index"]]),
                   scores=scores, logits=logits, labels=arrays["label"], melanoma=arrays["melanoma"])
      roc.write_roc(os.path.join(workdir, "results"), split, logits, arrays["label"],
                    arrays["melanoma"], _melanoma_class(datasets.class_names))
      if fmt:
        submission.write(os.path.join(workdir, "predictions", f"{split}_{fmt}.csv"), fmt,
                         [ids[i] for i in arrays["index"]], scores, datasets.class_names)
    out_dir = os.path.join(workdir, "explanations", split)
    explain_split(model_lib, module, config, state, datasets, split, loss_stats, out_dir)
    if writer is not None:
      writer.write_images(step, _pngs(out_dir, f"explanations_{split}"))
  return results


def _progress(batches, total, what):
  """Yields `batches`, logging a progress line with ETA about every 10% (long splits)."""
  progress = writers.Progress(total)
  for i, batch in enumerate(batches, 1):
    yield batch
    if total >= 20 and (i % (total // 10) == 0 or i == total):
      progress(i, f"batches, {what}")
