"""Layers shared by the backbones and the models built on them."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


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


def grouped_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                 rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                                 precision=None, **kwargs):
  """`lax.conv_general_dilated` (same signature, for `nn.Conv(conv_general_dilated=...)`) that
  runs an undilated grouped NHWC / HWIO convolution on CPU as image patches and one matmul
  batched over the groups: XLA:CPU runs grouped convolutions (forward and both gradients)
  about 25x slower than that (ResNeXt-50 32x4d's 3x3 convolutions, measured at 8-32 px,
  128-1024 channels). Same values up to float rounding; everything else, and every other
  backend, goes to lax.conv_general_dilated unchanged."""
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  numbers = (dimension_numbers if isinstance(dimension_numbers, lax.ConvDimensionNumbers)
             else lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers or nhwc))
  if (feature_group_count == 1 or dilated or numbers != nhwc or kwargs
      or jax.default_backend() != "cpu"):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision,
                                    **kwargs)
  kh, kw, group_in, out = rhs.shape
  groups = feature_group_count
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  (top, bottom), (left, right) = padding
  (sh, sw), (b, h, w, _) = window_strides, lhs.shape
  x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  ho, wo = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
  patches = jnp.stack([x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                       for i in range(kh) for j in range(kw)], axis=3)      # [B, h', w', k, C]
  patches = patches.reshape(b, ho, wo, kh * kw, groups, group_in)
  kernel = rhs.reshape(kh * kw, group_in, groups, out // groups)            # O is group-major
  y = jnp.einsum("bhwkgc,kcgo->bhwgo", patches, kernel, precision=precision)
  return y.reshape(b, ho, wo, out)
