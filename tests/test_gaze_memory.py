"""Gaze memory mode (config.model.decoder_chunk > 0): the same loss and gradients as the
batched decoder, a compiled program independent of T, temporaries flat in T.

On the cut networks (conftest.narrow_networks): the claims are about how the decoder's steps
are chunked, not about widths. Every test of this module runs under the fixture, so the
cached runs (`run`) are all of the cut model."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dermjax import config_lib
from dermjax.data import schema
from dermjax.models import gaze
from test_gaze_model import fake_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("narrow_networks")
STATS = {"splits": {"train": {"structure_presence": dict(zip(
    schema.STRUCTURES, [2000, 2000, 1131, 126, 573, 116]))}}}


def tiny_config(t, chunk=0, batch_norm=True):
  config = config_lib.load_config(os.path.join(REPO, "configs", "gaze.py"))
  config.data.image_size = 32  # diagnosis blocks 4-5 need 32 px (pool5 1 x 1)
  config.model.timesteps = t
  config.model.decoder_chunk = chunk
  config.model.batch_norm = batch_norm
  config.model.padding = "reflect"
  return config


@functools.lru_cache(maxsize=None)
def run(t, chunk, batch_norm):
  """(loss, grads, new batch_stats, initial variables) of one train-mode pass; variables
  from the default model (same tree in both modes)."""
  batch = fake_batch(32)
  base = tiny_config(t, 0, batch_norm)
  variables = jax.jit(lambda b: gaze.build(base).init(jax.random.key(0), b, train=False))(batch)
  return loss_and_grads(tiny_config(t, chunk, batch_norm), batch, variables) + (variables,)


def loss_and_grads(config, batch, variables):
  net = gaze.build(config)
  stats = gaze.loss_stats(STATS, config)

  def objective(params):
    out, new = net.apply({**variables, "params": params}, batch, train=True,
                         mutable=["batch_stats"])
    loss, aux = gaze.loss(out, batch, config, stats)
    return loss, (aux, new)

  (loss, (aux, new)), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(
      variables["params"])
  return loss, grads, new


@pytest.mark.parametrize("t,chunk,batch_norm", [(2, 1, False), (2, 2, True)])
def test_memory_mode_same_loss_and_gradients(t, chunk, batch_norm):
  """Without decoder BN (or with one chunk of all T steps, whose BN statistics are the
  batched decoder's), loss, gradients and BN updates equal the default's."""
  loss0, grads0, new0, _ = run(t, 0, batch_norm)
  loss1, grads1, new1, _ = run(t, chunk, batch_norm)
  assert np.isfinite(float(loss0))
  np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), grads1, grads0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new1, new0)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads0["decoder"])) > 0


def test_memory_mode_without_remat_same_loss_and_gradients():
  """config.model.memory_remat False (chunks kept, nothing recomputed): the same loss,
  gradients and BN updates as the rematerialised memory mode, in a program without remat."""
  loss1, grads1, new1, variables = run(2, 1, True)
  config = tiny_config(2, 1, True)
  config.model.memory_remat = False
  loss2, grads2, new2 = loss_and_grads(config, fake_batch(32), variables)
  np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-6)
  # XLA fuses the two programs differently, so f32 sums reassociate (|diff| ~2e-7 seen on CI).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads2, grads1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new2, new1)
  assert _has_remat(tiny_config(2, 1)) and not _has_remat(config)


def _has_remat(config):
  """Whether the train-mode forward's jaxpr has a rematerialised (jax.checkpoint) region."""
  net = gaze.build(config)
  batch = fake_batch(32)
  variables = jax.eval_shape(lambda b: net.init(jax.random.key(0), b), batch)
  forward = lambda v: net.apply(v, batch, train=True, mutable=["batch_stats"])[0]["mask_logits"]
  return "remat" in str(jax.make_jaxpr(forward)(variables))


def test_chunked_bn_uses_per_chunk_statistics():
  """With decoder BN in training mode and chunk 1, BN normalises each step with its own
  batch statistics and updates the running mean once per step: m_new = 0.81 m + 0.09 mu_0
  + 0.1 mu_1, where the batched decoder does m_new = 0.9 m + 0.1 (mu_0 + mu_1) / 2."""
  _, _, batched, variables = run(2, 0, True)
  _, _, chunked, _ = run(2, 1, True)
  old = np.asarray(variables["batch_stats"]["decoder"]["block1_bn1"]["mean"])
  new_b = np.asarray(batched["batch_stats"]["decoder"]["block1_bn1"]["mean"])
  new_c = np.asarray(chunked["batch_stats"]["decoder"]["block1_bn1"]["mean"])
  mean_all = (new_b - 0.9 * old) / 0.1          # (mu_0 + mu_1) / 2
  # Block 1's first BN sees the hidden states' skip averages, whose mean differs per step:
  # mu_1 - mu_0 = ((m_new_c - 0.81 m) - 0.18 mean_all) / 0.01 must be nonzero and consistent.
  mu_1 = (new_c - 0.81 * old - 0.09 * 2 * mean_all) / 0.01
  mu_0 = 2 * mean_all - mu_1
  assert not np.allclose(new_c, new_b, rtol=1e-4, atol=1e-6)
  assert np.all(np.isfinite(mu_0)) and np.all(np.isfinite(mu_1))


def _compiled_train_grad(t, chunk):
  config = tiny_config(t, chunk)
  net = gaze.build(config)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fake_batch(32))
  variables = jax.eval_shape(lambda b: net.init(jax.random.key(0), b), batch)

  def fn(v, b):
    out, _ = net.apply(v, b, train=True, mutable=["batch_stats"])
    return gaze.loss(out, b, config, gaze.loss_stats(STATS, config))[0]

  return jax.jit(jax.grad(fn)).lower(variables, batch)


def test_memory_mode_program_independent_of_t_and_temporaries_flat():
  lowered = {t: _compiled_train_grad(t, 1) for t in (2, 6)}
  lines = {t: len([l for l in v.as_text().splitlines() if "=" in l]) for t, v in lowered.items()}
  assert lines[2] == lines[6]
  temp = {t: v.compile().memory_analysis().temp_size_in_bytes for t, v in lowered.items()}
  assert temp[6] <= 1.3 * temp[2], temp


def test_decoder_chunk_must_divide_t():
  with pytest.raises(ValueError, match="decoder_chunk"):
    gaze.build(tiny_config(5, 2))
