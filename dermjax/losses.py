"""Loss terms shared by every model: pure functions on arrays.

Model-specific objectives (e.g. the gaze model's matched structure loss) compose these.
"""

import jax
import jax.numpy as jnp
import optax


def focal_loss(logits, labels, *, gamma: float = 2.0, weights=None, alpha: float | None = None):
  """Mean focal loss (Lin et al.; thesis eq. 12, theta = gamma).

  logits: [B, K]. K == 1: binary (sigmoid) with labels in {0, 1}; K > 1: softmax with
  integer labels in [0, K). weights: optional [B] (e.g. `valid`). Rows without a label
  (label < 0: padding, or images a layout has no diagnosis for, e.g. ISIC 2018 Task 1-2)
  get weight 0 (labelled_weights). Returns a scalar, 0 when no row counts. gamma = 0
  gives (binary) cross-entropy. alpha (K == 1 only): Lin et al.'s alpha_t, the weight
  alpha of positives and 1 - alpha of negatives (None: both 1).
  """
  labels = labels.astype(jnp.int32)
  weights = labelled_weights(labels, weights)
  labels = jnp.maximum(labels, 0)  # optax's (1 - p_t) ** gamma is NaN for y = -1 (weight 0)
  if logits.shape[-1] == 1:
    per_example = optax.sigmoid_focal_loss(logits[:, 0], labels.astype(logits.dtype), alpha=alpha,
                                           gamma=gamma)
  elif alpha is not None:
    raise ValueError("focal_loss: alpha is defined for a single sigmoid output (K == 1) only")
  else:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    log_pt = jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    per_example = -((1.0 - jnp.exp(log_pt)) ** gamma) * log_pt
  return weighted_mean(per_example, weights)


def labelled_weights(labels, weights=None):
  """[B] row weights of a diagnosis loss: `weights` (e.g. `valid`; None: ones) times
  (labels >= 0), so unlabelled rows (label -1) never count. labels: int [B]."""
  known = (labels >= 0).astype(jnp.float32)
  return known if weights is None else weights.astype(jnp.float32) * known


def weighted_mean(values, weights=None):
  """Mean of `values` [B] weighted by `weights` [B] (None: plain mean); 0 if all weights are 0."""
  if weights is None:
    return jnp.mean(values)
  weights = weights.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def dice_loss(pred, target, *, eps: float = 1e-6):
  """1 - Dice over the whole batch as one tensor (AttnMel): empty masks in some images are fine.

  pred, target: same shape, values in [0, 1]. Returns a scalar; 0 for pred == target (binary).
  """
  inter = jnp.sum(pred * target)
  return 1.0 - (2.0 * inter + eps) / (jnp.sum(pred) + jnp.sum(target) + eps)
