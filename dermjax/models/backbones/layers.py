"""Layers shared by the backbones and the models built on them."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def batch_norm(train: bool, frozen: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """torch's BatchNorm2d defaults (momentum 0.1, eps 1e-5); frozen -> always running stats."""
  return nn.BatchNorm(use_running_average=not train or frozen, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def argmax_max(x, axis: int, keepdims: bool = False):
  """The maximum of `x` over `axis`, its gradient routed to one argmax element (as torch's
  max-pool backward). jnp.max's gradient instead divides among the elements equal to the
  maximum, recomputed inside the compiled step: where XLA fuses the input into two
  computations that round differently (seen at --xla_backend_optimization_level=0), no
  element equals it and the gradient is 0 / 0 = NaN."""
  index = jnp.argmax(x, axis=axis, keepdims=True)
  out = jnp.take_along_axis(x, index, axis=axis)
  return out if keepdims else jnp.squeeze(out, axis)


def adaptive_pool(x, size: int, reduce: Callable = jnp.mean):
  """torch's AdaptiveAvgPool2d(size) (reduce=jnp.mean) / AdaptiveMaxPool2d (argmax_max):
  [B, H, W, C] -> [B, size, size, C].

  Output cell i reduces rows floor(i H / size) .. ceil((i + 1) H / size) - 1 (same for
  columns), so smaller maps are replicated and larger ones pooled exactly as in torch.
  """

  def pool_axis(x, axis):
    n = x.shape[axis]
    if n == size:
      return x
    cells = [
        reduce(jax.lax.slice_in_dim(x, (i * n) // size, -((-(i + 1) * n) // size), axis=axis),
               axis=axis, keepdims=True)
        for i in range(size)
    ]
    return jnp.concatenate(cells, axis=axis)

  return pool_axis(pool_axis(x, 1), 2)
