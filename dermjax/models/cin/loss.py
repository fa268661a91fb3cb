"""CIN stage-2 losses: weighted cross-entropy (eq. 4), pair BCE (eq. 5), L = L_c + lambda L_d (eq. 6)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dermjax.data import loader
from dermjax.models.cin.model import head_classes, same_class

WEIGHTINGS = ("balanced", "none")


def class_weights(counts, mode: str = "balanced"):
  """Eq. 4's w_j from the training split's class counts [K]: "balanced" w_j = N / (K n_j)
  (sklearn's; a class without images gets weight 0), "none" all ones. -> float32 [K]."""
  counts = np.asarray(counts, np.float64)
  if mode == "none":
    return np.ones(len(counts), np.float32)
  if mode != "balanced":
    raise ValueError(f"loss.class_weighting must be one of {WEIGHTINGS}, got {mode!r}")
  total = counts.sum()
  return np.where(counts > 0, total / (len(counts) * np.maximum(counts, 1)), 0.0).astype(np.float32)


def train_class_counts(data_stats: dict, target: str, num_classes: int):
  """Class counts [K] of the training split from stats.json (dermjax.data.prepare): binary
  targets from num_images and the positive count, "multiclass" from class_counts."""
  train = data_stats["splits"]["train"]
  key = loader.target_key(target)
  if key == "label":
    counts = list(train["class_counts"])
  else:
    positives = int(train[key])
    counts = [int(train["num_images"]) - positives, positives]
  if len(counts) != head_classes(num_classes):
    raise ValueError(f"data.target={target!r} has {len(counts)} classes; model.num_classes="
                     f"{num_classes} needs {head_classes(num_classes)}")
  return counts


def loss_stats(data_stats: dict, config) -> dict:
  """{"class_weights": [K]} from the training split (loss.class_weighting)."""
  counts = train_class_counts(data_stats, config.data.target, config.model.num_classes)
  return {"class_weights": class_weights(counts, config.loss.class_weighting)}


def weighted_ce(logits, labels, weights):
  """Per-example eq. 4 terms: -w_y log softmax(logits)_y; labels [B] (< 0: 0) -> [B]."""
  safe = jnp.maximum(labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -weights[safe] * jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]


def loss(outputs, batch, config, stats):
  """L = L_c + lambda L_d. L_c (eq. 4): the mean over every image fed to a branch (both images
  of each pair) of w_y CE; L_d (eq. 5): mean BCE of the pair logits against same_class.
  Padding rows and unknown labels (< 0) do not count (nor do pairs holding one, nor an image
  paired with itself). With module F the metrics also carry eq. 3's alpha and beta."""
  label = batch["label"]
  valid = batch["valid"].astype(jnp.float32) * (label >= 0)
  weights = jnp.asarray(stats.get("class_weights", jnp.ones(head_classes(config.model.num_classes))),
                        jnp.float32)
  ce_sum = jnp.sum(valid * weighted_ce(outputs["class_logits_a"], label, weights))
  count = jnp.sum(valid)
  metrics = {}
  if "pair_perm" in outputs:
    perm = outputs["pair_perm"]
    ce_sum += jnp.sum(valid[perm] * weighted_ce(outputs["class_logits_b"], label[perm], weights))
    count += jnp.sum(valid[perm])
    pair_valid = valid * valid[perm] * (perm != jnp.arange(perm.shape[0]))
    bce = optax.sigmoid_binary_cross_entropy(outputs["pair_logit"], same_class(label, perm))
    l_d = jnp.sum(pair_valid * bce) / jnp.maximum(jnp.sum(pair_valid), 1.0)
    metrics["distinguish"] = l_d
  l_c = ce_sum / jnp.maximum(count, 1.0)
  metrics["classification"] = l_c
  total = l_c + config.loss.distinguish_weight * metrics.get("distinguish", 0.0)
  metrics.update({k: jnp.mean(outputs[k]) for k in ("alpha", "beta", "alpha_b", "beta_b")
                  if k in outputs})
  metrics["loss"] = total
  return total, metrics
