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

`reflect_conv_general_dilated` (same signature) treats the padding it is given as reflect
padding: `nn.Conv(..., padding=1, conv_general_dilated=conv.reflect_conv_general_dilated)`
equals flax's `padding="REFLECT"` (`jnp.pad(mode="reflect")` + a `VALID` convolution, which
XLA:CPU runs ~2.8x slower than a zero-padded one) in value and gradient. It is computed as
the zero-padded convolution plus thin corrections from the reflected border (`reflect_conv`).
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


def input_grad(dy, w, padding, precision=None):
  """d(canonical conv)/dx as one canonical convolution: the full correlation of dy
  [N, H', W', O] with the flipped kernel, in / out channels swapped -> [N, H, W, C]."""
  kh, kw = w.shape[:2]
  (top, bottom), (left, right) = padding
  w_flipped = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)                       # [kh, kw, O, C]
  return _conv(dy, w_flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)),
               precision)


def weight_grad(x, dy, padding, precision=None):
  """d(canonical conv)/dw as one canonical convolution: the channels of x [N, H, W, C] as
  its batch, the examples as the contracted features, dy [N, H', W', O] as the kernel
  -> [kh, kw, C, O]."""
  dw = _conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), padding,
             precision)                                                      # [C, kh, kw, O]
  return jnp.transpose(dw, (1, 2, 0, 3))


def _bwd(padding, precision, residuals, dy):
  x, w = residuals
  dy = dy.astype(x.dtype)
  return (input_grad(dy, w, padding, precision).astype(x.dtype),
          weight_grad(x, dy, padding, precision).astype(w.dtype))


canonical_conv.defvjp(_fwd, _bwd)


def im2col(x, kernel, padding):
  """x [N, H, W, C] -> patches [N, H', W', kh * kw * C] in (kh, kw, C) order, so that
  patches @ w.reshape(kh * kw * C, O) is the convolution with an HWIO kernel w."""
  kh, kw = kernel
  (top, bottom), (left, right) = padding
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  h, wd = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  return jnp.concatenate([xp[:, i:i + h, j:j + wd] for i in range(kh) for j in range(kw)], -1)


def patches_conv(x, w, padding, precision=None):
  """canonical_conv's forward value as im2col patches + one dot (XLA:CPU's dot kernels)."""
  kh, kw, c, o = w.shape
  return jnp.dot(im2col(x, (kh, kw), padding), w.reshape(kh * kw * c, o), precision=precision)


def patches_input_grad(dy, w, padding, precision=None):
  """input_grad as patches of dy + one dot."""
  kh, kw = w.shape[:2]
  (top, bottom), (left, right) = padding
  w_flipped = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)
  return patches_conv(dy, w_flipped, ((kh - 1 - top, kh - 1 - bottom),
                                      (kw - 1 - left, kw - 1 - right)), precision)


def patches_weight_grad(x, dy, padding, precision=None):
  """weight_grad as patches(x)^T @ dy, one dot contracting N * H' * W' -> [kh, kw, C, O]."""
  (top, bottom), (left, right) = padding
  kh = x.shape[1] + top + bottom - dy.shape[1] + 1
  kw = x.shape[2] + left + right - dy.shape[2] + 1
  dw = jnp.einsum("nhwk,nhwo->ko", im2col(x, (kh, kw), padding), dy, precision=precision)
  return dw.reshape(kh, kw, x.shape[3], dy.shape[3])


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


def _reflect_rows(x, lo, hi):
  """[N, H, W, C] -> the lo top and hi bottom rows of jnp.pad(x, rows (lo, hi), "reflect")."""
  h = x.shape[1]
  return jnp.flip(x[:, 1:lo + 1], 1), jnp.flip(x[:, h - hi - 1:h - 1], 1)


def reflect_conv(x, w, precision=None):
  """`jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), "reflect")` then a VALID convolution with
  w, for x [N, H, W, C], w [k, k, C, O] with k = 2p + 1 odd, p < H, W -> [N, H, W, O].

  The reflect-padded input is the zero-padded one plus D, where D is zero except on the
  p-wide frame (the reflected rows, corners included, and the reflected columns). So the
  result is the zero-padded convolution plus D's share, which reaches only the p outer output
  rows / columns and only through the kernel taps that overlap the frame: four thin
  convolutions ([N, p, W + 2p, C] with the kernel's p top / bottom rows, [N, H, p, C] with
  its p left / right columns), about 4 / (3H) of the main convolution's work at p = 1.
  All convolutions are `canonical_conv` (fast gradients inside loops as well).
  """
  k = w.shape[0]
  p = (k - 1) // 2
  h, wd = x.shape[1:3]
  if w.shape[1] != k or k % 2 == 0 or not (0 < p < min(h, wd)):
    raise ValueError(f"reflect_conv: needs an odd square kernel smaller than twice the input, "
                     f"got kernel {w.shape[:2]} for input {x.shape[1:3]}")
  pads = ((p, p), (p, p))
  y = canonical_conv(x, w, pads, precision)
  # Top / bottom frame rows, reflect-padded along the width too (the corners).
  top, bottom = (jnp.pad(r, ((0, 0), (0, 0), (p, p), (0, 0)), mode="reflect")
                 for r in _reflect_rows(x, p, p))
  # Left / right frame columns of the H interior rows.
  left, right = (jnp.swapaxes(c, 1, 2) for c in _reflect_rows(jnp.swapaxes(x, 1, 2), p, p))
  y_top = canonical_conv(top, w[:p], ((0, p - 1), (0, 0)), precision)         # [N, p, W, O]
  y_bottom = canonical_conv(bottom, w[p + 1:], ((p - 1, 0), (0, 0)), precision)
  y_left = canonical_conv(left, w[:, :p], ((p, p), (0, p - 1)), precision)     # [N, H, p, O]
  y_right = canonical_conv(right, w[:, p + 1:], ((p, p), (p - 1, 0)), precision)
  zero = jnp.zeros((), y.dtype)
  rows = lambda v, lo, hi: lax.pad(v, zero, ((0, 0, 0), (lo, hi, 0), (0, 0, 0), (0, 0, 0)))
  cols = lambda v, lo, hi: lax.pad(v, zero, ((0, 0, 0), (0, 0, 0), (lo, hi, 0), (0, 0, 0)))
  return (y + rows(y_top, 0, h - p) + rows(y_bottom, h - p, 0)
          + cols(y_left, 0, wd - p) + cols(y_right, wd - p, 0))


def reflect_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                 rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                                 batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`'s signature with `padding` read as reflect padding.

  Symmetric "same" padding ((p, p), (p, p)) of a stride-1 NHWC/HWIO convolution with an odd
  square kernel (k = 2p + 1) takes `reflect_conv`; any other case pads with
  `jnp.pad(mode="reflect")` and runs a VALID convolution (flax's "REFLECT").
  """
  pads = _canonical_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                            dimension_numbers, feature_group_count, batch_group_count,
                            preferred_element_type)
  k = rhs.shape[0] if rhs.ndim == 4 else 0
  p = (k - 1) // 2
  if (pads is not None and k % 2 == 1 and rhs.shape[1] == k and pads == ((p, p), (p, p))
      and 0 < p < min(lhs.shape[1:3])):
    return reflect_conv(lhs, rhs, precision)
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  spatial, kernel = dn.lhs_spec[2:], [rhs.shape[i] for i in dn.rhs_spec[2:]]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads([lhs.shape[i] for i in spatial], kernel, window_strides,
                                  padding)
  pad_width = [(0, 0)] * lhs.ndim
  for axis, pad in zip(spatial, padding):
    pad_width[axis] = tuple(int(v) for v in pad)
  lhs = jnp.pad(lhs, pad_width, mode="reflect")
  return lax.conv_general_dilated(lhs, rhs, window_strides, "VALID", lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, batch_group_count,
                                  precision, preferred_element_type)
