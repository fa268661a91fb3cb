"""ZooME (Xing et al., zoom-in attention and metadata embedding): the paper's project folder.

  model.py   ZoomSE (eqs. 1-3), MetadataEmbedding (eq. 4), the ZooME network on ResNeXt-50 /
             ResNet-50 / AlexNet, ImageNet pretrained_targets
  (here)     the model contract (dermjax/models/__init__.py) for `model.name = "zoome"`: focal
             loss (eq. 5), metadata-contribution arrays and report, Grad-CAM explanations.

Config fields (see configs/zoome.py): model.{arch, zoom_se, metadata, zoom_se_reduction,
zoom_se_pool_size, zoom_se_reading, metadata_hidden, num_classes, dtype},
loss.{focal_alpha, focal_gamma}.
"""

import csv
import json
import math
import os

import jax
import numpy as np

from dermjax import losses
from dermjax.data import schema
from dermjax.metrics import diagnosis
from dermjax.models.common import compute_dtype, explain as common_explain
from dermjax.models.zoome.model import (ARCHS, READINGS, MetadataEmbedding, ZooME, ZoomSE,
                                        pretrained_targets)

__all__ = ["build", "loss", "eval_arrays", "report", "explain", "saliency", "ZooME", "ZoomSE",
           "MetadataEmbedding", "pretrained_targets", "ARCHS", "READINGS"]

CONTRIBUTION_FIELDS = ("id", "melanoma", "age", "sex", "site", "score", "score_without_metadata",
                       "metadata_contribution")


def build(config) -> ZooME:
  m = config.model
  if m.zoom_se_reading not in READINGS:
    raise ValueError(f"config.model.zoom_se_reading must be one of {READINGS}, got {m.zoom_se_reading!r}")
  if m.num_classes != 1:
    raise ValueError(f"ZooME predicts one sigmoid melanoma score; config.model.num_classes = {m.num_classes}")
  return ZooME(arch=m.arch, zoom_se=m.zoom_se, metadata=m.metadata, num_classes=1,
               reduction=m.zoom_se_reduction, pool_size=m.zoom_se_pool_size,
               reading=m.zoom_se_reading, metadata_hidden=m.metadata_hidden,
               blocks_per_stage=m.get("blocks_per_stage", 0),
               backbone_width=m.get("backbone_width", 0), dtype=compute_dtype(config))


def loss(outputs, batch, config, stats):
  """Eq. 5: sigmoid focal loss (alpha_t, gamma) on batch["label"], weighted by batch["valid"]."""
  del stats
  focal = losses.focal_loss(outputs["logits"], batch["label"], gamma=config.loss.focal_gamma,
                            alpha=config.loss.focal_alpha, weights=batch["valid"])
  return focal, {"focal": focal, "loss": focal}


def eval_arrays(outputs, batch, config):
  """Per-example melanoma score with every metadata field missing (metadata models only)."""
  del batch, config
  if "logits_without_metadata" not in outputs:
    return {}
  return {"score_without_metadata": jax.nn.sigmoid(outputs["logits_without_metadata"][:, 0])}


def report(arrays, config):
  """Scalars (so dermjax.cv averages them over folds): the operating point chosen on this
  split and the metadata's contribution.

  youden_threshold and accuracy / sensitivity / specificity_at_youden: at the split's own
  Youden threshold (on the validation fold: the validation-chosen threshold; apply it to
  another split's predictions with diagnosis.at_threshold). With metadata:
  metadata_mean_contribution / metadata_mean_abs_contribution (change of the melanoma score
  when the metadata are withheld), auc_without_metadata, metadata_flips_at_0.5 (fraction
  of decisions at 0.5 that change).
  """
  del config
  labels = arrays["label"]
  known = labels >= 0
  scores = diagnosis.probabilities(arrays["logits"])[known]
  labels = labels[known]
  at = diagnosis.at_threshold(scores, labels, diagnosis.youden_threshold(scores, labels))
  out = {"youden_threshold": at["threshold"],
         **{f"{k}_at_youden": at[k] for k in ("accuracy", "sensitivity", "specificity")}}
  if "score_without_metadata" in arrays:
    without = np.asarray(arrays["score_without_metadata"], np.float64)[known]
    change = scores - without
    both = labels.min(initial=0) != labels.max(initial=0)
    mean = lambda v: float(np.mean(v)) if len(v) else math.nan
    out.update({
        "metadata_mean_contribution": mean(change),
        "metadata_mean_abs_contribution": mean(np.abs(change)),
        "auc_without_metadata": diagnosis.binary_metrics(without, labels)["auc"] if both else math.nan,
        "metadata_flips_at_0.5": mean((scores > .5) != (without > .5)),
    })
  return out


def _name(values, index):
  return values[index] if 0 <= index < len(values) else ""


def saliency(outputs, batch, config):
  """The contract's saliency hook: {"cam": Grad-CAM [B, h, w]}."""
  del batch, config
  return {"cam": outputs["cam"]}


def explain(outputs, batch, images, ids, config, out_dir):
  """Grad-CAM overlays (<id>.png, <id>_cam.npy) and, for metadata models, each example's
  score with and without its metadata in metadata_contribution.csv (appended) and <id>.json."""
  del config
  common_explain.save_overlays({"cam": np.asarray(outputs["cam"])}, images, ids, out_dir,
                               common_explain.lesion_masks(batch, len(ids)))
  if "logits_without_metadata" not in outputs:
    return
  score = 1 / (1 + np.exp(-np.asarray(outputs["logits"], np.float64)[:, 0]))
  without = 1 / (1 + np.exp(-np.asarray(outputs["logits_without_metadata"], np.float64)[:, 0]))
  path = os.path.join(out_dir, "metadata_contribution.csv")
  new = not os.path.exists(path)
  with open(path, "a", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    if new:
      writer.writerow(CONTRIBUTION_FIELDS)
    for i, example_id in enumerate(ids):
      age = float(batch["age"][i])
      row = {"id": example_id, "melanoma": int(batch["melanoma"][i]),
             "age": None if math.isnan(age) else age,
             "sex": _name(schema.SEXES, int(batch["sex"][i])),
             "site": _name(schema.SITES, int(batch["site"][i])),
             "score": float(score[i]), "score_without_metadata": float(without[i]),
             "metadata_contribution": float(score[i] - without[i])}
      writer.writerow(["" if row[k] is None else row[k] for k in CONTRIBUTION_FIELDS])
      with open(os.path.join(out_dir, f"{example_id}.json"), "w", encoding="utf-8") as g:
        json.dump(row, g, indent=2)

