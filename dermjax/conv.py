"""A drop-in `lax.conv_general_dilated` whose gradients stay fast inside loops on XLA:CPU.

XLA rewrites a convolution's gradients (the input gradient, and the weight gradient, which
is a convolution with the output gradient as its "kernel") into the canonical NHWC/HWIO
form its fast CPU kernels take, but not inside a while loop's body: there they keep
the transposed dimension labels (e.g. `f01b_i01o->01bf`) and run in XLA's generic loop
emitter. The backward pass of a `jax.lax.scan` / `nn.scan` over convolutions (the gaze
model's Attentive ConvLSTM) then runs ~15x slower than the same steps unrolled.

`conv_general_dilated` here computes the same values with a custom VJP whose two gradient
convolutions are written in the canonical form from the start (the transposes are explicit
array ops), so they run in the fast kernels wherever they are. Stride-1, undilated,
ungrouped NHWC/HWIO convolutions with padding at most kernel - 1 per side take this path;
everything else falls through to `lax.conv_general_dilated` unchanged. Pass it to flax:
`nn.Conv(..., conv_general_dilated=conv.conv_general_dilated)`.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, padding, precision):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def canonical_conv(x, w, padding, precision=None):
  """x [N, H, W, C], w [kh, kw, C, O], padding ((top, bottom), (left, right)) -> [N, H', W', O]."""
  return _conv(x, w, padding, precision)


def _fwd(x, w, padding, precision):
  return _conv(x, w, padding, precision), (x, w)


def _bwd(padding, precision, residuals, dy):
  x, w = residuals
  kh, kw = w.shape[:2]
  (top, bottom), (left, right) = padding
  dy = dy.astype(x.dtype)
  # Input gradient: full correlation of dy with the flipped kernel, in/out channels swapped.
  w_flipped = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)                       # [kh, kw, O, C]
  dx = _conv(dy, w_flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)),
             precision)
  # Weight gradient: channels of x as the batch, examples as the contracted features.
  dw = _conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), padding,
             precision)                                                      # [C, kh, kw, O]
  return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


canonical_conv.defvjp(_fwd, _bwd)


def _canonical_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                       dimension_numbers, feature_group_count, batch_group_count,
                       preferred_element_type):
  """((top, bottom), (left, right)) when canonical_conv applies, else None."""
  if lhs.ndim != 4 or tuple(window_strides) != (1, 1):
    return None
  if any(d is not None and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation)):
    return None
  if feature_group_count != 1 or batch_group_count != 1 or preferred_element_type is not None:
    return None
  if (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
    return None
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(not (0 <= lo < k and 0 <= hi < k) for (lo, hi), k in zip(pads, rhs.shape[:2])):
    return None
  return pads


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`'s signature and values; canonical gradients where possible."""
  pads = _canonical_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                            dimension_numbers, feature_group_count, batch_group_count,
                            preferred_element_type)
  if pads is None:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)
  return canonical_conv(lhs, rhs, pads, precision)
