"""dermjax.conv.reflect_conv / reflect_conv_general_dilated: equal to jnp.pad(mode="reflect")
+ a VALID convolution in value and in both gradients; the gaze model's reflect convs use it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dermjax import conv
from dermjax.models.gaze import model as gaze_model

NHWC = ("NHWC", "HWIO", "NHWC")


def reference(x, w):
  """The explicit form: reflect-pad by (k - 1) / 2, then a VALID convolution."""
  p = (w.shape[0] - 1) // 2
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
  return lax.conv_general_dilated(padded, w, (1, 1), "VALID", dimension_numbers=NHWC)


def check(fn, x, w, rng):
  want = reference(x, w)
  got = fn(x, w)
  assert got.shape == want.shape == x.shape[:3] + w.shape[3:]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  dy = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * dy)
  for a, b in zip(jax.grad(loss(fn), (0, 1))(x, w), jax.grad(loss(reference), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# Random shapes: odd and even heights / widths, non-square, the smallest legal sizes.
@pytest.mark.parametrize("seed", range(6))
def test_reflect_conv_matches_pad_and_valid_kernel3(seed):
  rng = np.random.default_rng(seed)
  n, c, o = rng.integers(1, 4), rng.integers(1, 5), rng.integers(1, 5)
  h, w_ = [(2, 2), (3, 5), (4, 7), (8, 6), (9, 9), (13, 10)][seed]
  x = jnp.asarray(rng.normal(size=(n, h, w_, c)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, c, o)), jnp.float32)
  check(conv.reflect_conv, x, w, rng)


@pytest.mark.parametrize("k,size", [(5, (3, 4)), (5, (8, 7)), (7, (6, 9))])
def test_reflect_conv_other_odd_kernels(k, size):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2,) + size + (3,)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 2)), jnp.float32)
  check(conv.reflect_conv, x, w, rng)


def test_flax_conv_with_it_equals_flax_reflect():
  """nn.Conv(padding=1, conv_general_dilated=reflect_...) == nn.Conv(padding="REFLECT")."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)
  flax_ref = nn.Conv(4, (3, 3), padding="REFLECT")
  ours = gaze_model.conv3x3(4, "reflect", jnp.float32)
  variables = flax_ref.init(jax.random.key(0), x)
  f_ref = lambda v, x: jnp.sum(jnp.tanh(flax_ref.apply(v, x)))
  f_new = lambda v, x: jnp.sum(jnp.tanh(ours.apply(v, x)))
  np.testing.assert_allclose(f_new(variables, x), f_ref(variables, x), rtol=1e-5)
  g_new, g_ref = jax.grad(f_new, (0, 1))(variables, x), jax.grad(f_ref, (0, 1))(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_new, g_ref)


def test_no_explicit_reflect_pad_of_the_full_input():
  """The compiled forward has no VALID convolution over a padded [N, H+2, W+2, C] input."""
  x = jnp.zeros((2, 16, 16, 8), jnp.float32)
  w = jnp.zeros((3, 3, 8, 8), jnp.float32)
  text = jax.jit(conv.reflect_conv).lower(x, w).as_text()
  assert "18x18x8" not in text and "16x16x8" in text


def test_fallbacks_equal_jnp_pad():
  """Padding other than "same" for an odd kernel: jnp.pad(reflect) + VALID, as flax."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(1, 6, 5, 2)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(2, 2, 2, 3)), jnp.float32)
  got = conv.reflect_conv_general_dilated(x, w, (1, 1), ((1, 0), (0, 1)), dimension_numbers=NHWC)
  padded = jnp.pad(x, ((0, 0), (1, 0), (0, 1), (0, 0)), mode="reflect")
  want = lax.conv_general_dilated(padded, w, (1, 1), "VALID", dimension_numbers=NHWC)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError):
    conv.reflect_conv(x, jnp.zeros((4, 4, 2, 3)))


def test_reflect_gradients_inside_a_scan_are_canonical():
  """As tests/test_conv.py: the gradient convolutions of a scanned reflect conv are in the
  canonical NHWC/HWIO form (no transposed labels that XLA:CPU runs in its slow emitter)."""
  x = jnp.ones((2, 8, 8, 4), jnp.float32)
  w = jnp.ones((3, 3, 4, 4), jnp.float32) * 0.01

  def loss(w):
    def body(h, _):
      return jnp.tanh(conv.reflect_conv(h, w)), None
    return jnp.sum(jax.lax.scan(body, x, None, length=3)[0])

  hlo = jax.jit(jax.grad(loss)).lower(w).compile().as_text()
  labels = {line.split("dim_labels=")[1].split(",")[0].split(" ")[0]
            for line in hlo.splitlines() if "dim_labels=" in line}
  assert labels and labels <= {"b01f_01io->b01f"}, labels


def test_gaze_reflect_and_reflect_explicit_agree():
  """The gaze model with padding "reflect" (corrections) and "reflect_explicit" (flax's
  jnp.pad + VALID, the earlier form) gives the same outputs for the same variables."""
  from dermjax import config_lib
  import os
  config = config_lib.load_config(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs", "gaze.py"))
  config.data.image_size = 32
  config.model.timesteps = 2
  rng = np.random.default_rng(3)
  batch = {"image": jnp.asarray(rng.normal(size=(1, 32, 32, 3)), jnp.float32)}
  outs = {}
  for padding in ("reflect", "reflect_explicit"):
    config.model.padding = padding
    net = gaze_model.build(config)
    if not outs:
      variables = net.init(jax.random.key(0), batch)
    outs[padding] = net.apply(variables, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               outs["reflect"], outs["reflect_explicit"])
