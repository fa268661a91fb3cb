"""Gaze memory mode (config.model.decoder_chunk > 0): the same loss and gradients as the
batched decoder, a compiled program independent of T, temporaries flat in T."""

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


@pytest.mark.parametrize("t,chunk,batch_norm", [(4, 1, False), (4, 2, False), (2, 2, True)])
def test_memory_mode_same_loss_and_gradients(t, chunk, batch_norm):
  """Without decoder BN (or with one chunk of all T steps, whose BN statistics are the
  batched decoder's), loss, gradients and BN updates equal the default's."""
  batch = fake_batch(32)
  base = tiny_config(t, 0, batch_norm)
  variables = jax.jit(lambda b: gaze.build(base).init(jax.random.key(0), b, train=False))(batch)
  loss0, grads0, new0 = loss_and_grads(base, batch, variables)
  loss1, grads1, new1 = loss_and_grads(tiny_config(t, chunk, batch_norm), batch, variables)
  assert np.isfinite(float(loss0))
  np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), grads1, grads0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new1, new0)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads0["decoder"])) > 0


def test_chunked_bn_uses_per_chunk_statistics():
  """With decoder BN in training mode and chunk 1, the running mean of the first decoder BN
  is T sequential momentum updates with each step's batch mean (the thesis code's
  per-step decoder), not one update with the mean over all B x T maps."""
  t = 2
  batch = fake_batch(32)
  base = tiny_config(t, 0)
  variables = jax.jit(lambda b: gaze.build(base).init(jax.random.key(0), b, train=False))(batch)
  _, _, batched = loss_and_grads(base, batch, variables)
  _, _, chunked = loss_and_grads(tiny_config(t, 1), batch, variables)
  old = np.asarray(variables["batch_stats"]["decoder"]["block1_bn1"]["mean"])
  new_b = np.asarray(batched["batch_stats"]["decoder"]["block1_bn1"]["mean"])
  new_c = np.asarray(chunked["batch_stats"]["decoder"]["block1_bn1"]["mean"])
  mean_all = (new_b - 0.9 * old) / 0.1          # batch mean over all B x T maps
  # Per-step means m_0, m_1 average to mean_all; sequential: 0.81 old + 0.09 m_0 + 0.1 m_1.
  assert not np.allclose(new_c, new_b, rtol=1e-4, atol=1e-6)
  assert np.all(np.isfinite(new_c)) and np.abs(new_c - (0.81 * old + 0.19 * mean_all)).max() < (
      np.abs(mean_all).max() + 1.0)


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
  lowered = {t: _compiled_train_grad(t, 1) for t in (2, 8)}
  lines = {t: len([l for l in v.as_text().splitlines() if "=" in l]) for t, v in lowered.items()}
  assert lines[2] == lines[8]
  temp = {t: v.compile().memory_analysis().temp_size_in_bytes for t, v in lowered.items()}
  assert temp[8] <= 1.3 * temp[2], temp


def test_decoder_chunk_must_divide_t():
  with pytest.raises(ValueError, match="decoder_chunk"):
    gaze.build(tiny_config(5, 2))
