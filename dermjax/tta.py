"""Test-time augmentation (config.eval.tta = n): the model runs on the first n of the 8
flips / transposes of each image (the dihedral group) and its "logits" become those of the
views' mean probability."""

import jax
import jax.numpy as jnp


def dihedral(x, k: int):
  """The k-th of the 8 flips/transposes (k in [0, 8)) of square images x [B, S, S, C]:
  bit 2 transposes, bit 0 flips left-right, bit 1 flips up-down (in that order)."""
  if k & 4:
    x = jnp.swapaxes(x, 1, 2)
  if k & 1:
    x = x[:, :, ::-1]
  if k & 2:
    x = x[:, ::-1]
  return x


def mean_probability_logits(logits):
  """logits [n, B, K] of n views -> [B, K] logits whose sigmoid / softmax is the views' mean
  probability (clipped away from 0 and 1 so the logits stay finite)."""
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    p = jnp.clip(jnp.mean(jax.nn.sigmoid(logits), 0), 1e-7, 1 - 1e-7)
    return jnp.log(p) - jnp.log1p(-p)
  return jnp.log(jnp.maximum(jnp.mean(jax.nn.softmax(logits, -1), 0), 1e-30))


class TTAModule:
  """A flax module's `apply` with test-time augmentation: outputs of the untransformed batch,
  "logits" replaced by mean_probability_logits over the first `n` dihedral views of image
  and masks (and source_image, where the batch has one). The views run one after another
  (jax.lax.map: one compiled model body), so the batch the model sees is unchanged."""

  def __init__(self, module, n: int = 8):
    if not 1 <= n <= 8:
      raise ValueError(f"TTA takes 1 to 8 dihedral views, got {n}")
    self.module, self.n = module, int(n)

  def apply(self, variables, batch, *, train=False, **kwargs):
    outputs = self.module.apply(variables, batch, train=train, **kwargs)
    if self.n == 1 or "logits" not in outputs:
      return outputs
    views = {k: jnp.stack([dihedral(batch[k], i) for i in range(1, self.n)])
             for k in ("image", "masks", "source_image") if k in batch}
    logits = jax.lax.map(
        lambda v: self.module.apply(variables, {**batch, **v}, train=train, **kwargs)["logits"],
        views)
    all_logits = jnp.concatenate([outputs["logits"][None].astype(jnp.float32),
                                  logits.astype(jnp.float32)])
    return {**outputs, "logits": mean_probability_logits(all_logits)}
