"""dermjax.conv: same values and gradients as lax.conv_general_dilated; canonical gradient
convolutions inside a scanned loop (the XLA:CPU slow path it avoids)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dermjax import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _both(x, w, padding, **kw):
  ref = lambda x, w: lax.conv_general_dilated(x, w, kw.get("strides", (1, 1)), padding,
                                              dimension_numbers=NHWC)
  new = lambda x, w: conv.conv_general_dilated(x, w, kw.get("strides", (1, 1)), padding,
                                               dimension_numbers=NHWC)
  return ref, new


@pytest.mark.parametrize("kernel,padding", [
    ((3, 3), ((1, 1), (1, 1))), ((3, 3), "SAME"), ((3, 3), "VALID"), ((3, 5), ((0, 2), (4, 1))),
    ((1, 1), "VALID"), ((2, 2), "SAME")])
def test_values_and_gradients_match_lax(kernel, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel + (3, 4)), jnp.float32)
  ref, new = _both(x, w, padding)
  np.testing.assert_allclose(new(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  dy = jnp.asarray(rng.normal(size=ref(x, w).shape), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * dy)
  for a, b in zip(jax.grad(loss(new), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_gradients_keep_dtypes():
  x = jnp.ones((1, 6, 6, 2), jnp.bfloat16)
  w = jnp.ones((3, 3, 2, 5), jnp.bfloat16)
  dx, dw = jax.grad(lambda x, w: jnp.sum(conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC).astype(jnp.float32)), (0, 1))(x, w)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  assert float(dw[1, 1, 0, 0]) == 36.0 and float(dx[0, 0, 0, 0]) == 20.0  # 4 taps x 5 outputs


def test_other_convolutions_fall_through_to_lax():
  x = jnp.ones((1, 8, 8, 2))
  w = jnp.ones((3, 3, 2, 4))
  y = conv.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC)
  np.testing.assert_array_equal(y, lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                                            dimension_numbers=NHWC))
  assert conv._canonical_padding(x, w, (1, 1), ((3, 0), (0, 0)), None, None, NHWC, 1, 1,
                                 None) is None  # Padding beyond kernel - 1.
  assert conv._canonical_padding(x, w, (1, 1), "SAME", None, (2, 2), NHWC, 1, 1, None) is None


class _Cell(nn.Module):
  fast: bool

  @nn.compact
  def __call__(self, h, x):
    kw = {"conv_general_dilated": conv.conv_general_dilated} if self.fast else {}
    h = jnp.tanh(nn.Conv(8, (3, 3), padding=1, **kw)(h) + nn.Conv(8, (3, 3), padding=1, **kw)(x))
    return h, h


def _scanned(fast):
  return nn.scan(_Cell, variable_broadcast="params", split_rngs={"params": False},
                 in_axes=nn.broadcast, length=3)(fast)


def test_scan_gradients_match_and_use_canonical_convolutions():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 10, 10, 8)), jnp.float32)
  h0 = jnp.zeros_like(x)
  params = _scanned(False).init(jax.random.PRNGKey(0), h0, x)

  def grads(fast):
    loss = lambda p: jnp.sum(_scanned(fast).apply(p, h0, x)[1] ** 2)
    return jax.jit(jax.grad(loss)), loss

  (slow, _), (fast, _) = grads(False), grads(True)
  for a, b in zip(jax.tree.leaves(fast(params)), jax.tree.leaves(slow(params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  hlo = fast.lower(params).compile().as_text()
  labels = re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)
  assert labels and set(labels) == {"b01f_01io->b01f"}, set(labels)


def test_patches_forms_match_the_canonical_convolutions():
  """dermjax.conv's im2col + dot forms (benchmarked against XLA:CPU's convolution) give the
  canonical convolution's value and both gradients, also with uneven padding."""
  rng = np.random.default_rng(3)
  for pads, kernel in ((((1, 1), (1, 1)), (3, 3)), (((0, 2), (1, 0)), (3, 2))):
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel + (3, 4)), jnp.float32)
    y = conv.canonical_conv(x, w, pads)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    np.testing.assert_allclose(conv.patches_conv(x, w, pads), y, rtol=1e-5, atol=1e-5)
    _, vjp = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, (1, 1), pads,
                                                           dimension_numbers=NHWC), x, w)
    dx, dw = vjp(dy)
    np.testing.assert_allclose(conv.input_grad(dy, w, pads), dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv.weight_grad(x, dy, pads), dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv.patches_input_grad(dy, w, pads), dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv.patches_weight_grad(x, dy, pads), dw, rtol=1e-4, atol=1e-4)
