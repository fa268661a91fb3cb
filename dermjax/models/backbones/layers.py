"""Layers shared by the backbones and the models built on them."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def batch_norm(train: bool, frozen: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """torch's BatchNorm2d defaults (momentum 0.1, eps 1e-5); frozen -> always running stats."""
  return nn.BatchNorm(use_running_average=not train or frozen, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def adaptive_pool(x, size: int, reduce: Callable = jnp.mean):
  """torch's AdaptiveAvgPool2d(size) (reduce=jnp.mean) / AdaptiveMaxPool2d (jnp.max):
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
