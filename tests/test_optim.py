"""Optimiser from config: per-module learning rates, frozen groups, torch-style weight decay."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from dermjax import optim


def _config(**overrides):
  c = ml_collections.ConfigDict(dict(
      name="adam", b1=0.92, b2=0.96, momentum=0.9, weight_decay=1e-6, learning_rate=1e-4,
      groups=ml_collections.ConfigDict(), decay_every_epochs=0, decay_factor=0.1,
      nesterov=False))
  c.update(overrides)
  return c


def _params():
  rng = np.random.default_rng(0)
  return {"encoder": {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)}},
          "convlstm": {"kernel": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          "branch": {"dense": {"kernel": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)}}}


def _thesis_config():
  c = _config()
  c.groups = ml_collections.ConfigDict(dict(
      encoder=("^encoder/", 0.0), convlstm=("^convlstm/", 1e-2)))
  return c


def test_labels_and_mask():
  c = _thesis_config()
  labels = optim.param_labels(_params(), c)
  assert labels["encoder"]["conv"]["kernel"] == "encoder"
  assert labels["convlstm"]["kernel"] == "convlstm"
  assert labels["branch"]["dense"]["kernel"] == optim.DEFAULT_GROUP
  mask = optim.trainable_mask(_params(), c)
  assert not mask["encoder"]["conv"]["kernel"] and mask["convlstm"]["kernel"]


def test_overlapping_groups_are_an_error():
  c = _config()
  c.groups = ml_collections.ConfigDict(dict(a=("conv", 1e-3), b=("encoder", 1e-3)))
  with pytest.raises(ValueError, match="matches several groups"):
    optim.param_labels(_params(), c)


def test_group_with_lr_zero_is_bit_identical_and_rates_apply():
  c = _thesis_config()
  params = _params()
  tx = optim.create_optimizer(c, params, steps_per_epoch=10)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(np.asarray(new["encoder"]["conv"]["kernel"]),
                                np.asarray(params["encoder"]["conv"]["kernel"]))
  # First Adam step moves each parameter by ~lr (sign of the gradient).
  step_convlstm = np.asarray(params["convlstm"]["kernel"] - new["convlstm"]["kernel"])
  step_branch = np.asarray(params["branch"]["dense"]["kernel"] - new["branch"]["dense"]["kernel"])
  np.testing.assert_allclose(step_convlstm, 1e-2, rtol=1e-3)
  np.testing.assert_allclose(step_branch, 1e-4, rtol=1e-3)


@pytest.mark.parametrize("name,nesterov", [("adam", False), ("sgd", False), ("sgd", True)])
def test_matches_torch_with_weight_decay(name, nesterov):
  """Same trajectory as torch.optim.Adam / SGD(momentum[, nesterov]) with weight_decay (L2 in
  the gradient)."""
  c = _config(name=name, weight_decay=0.1, learning_rate=0.05, nesterov=nesterov)
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(5,)).astype(np.float32)
  grads = rng.normal(size=(4, 5)).astype(np.float32)
  params = {"w": jnp.asarray(w0)}
  tx = optim.create_optimizer(c, params, steps_per_epoch=1)
  state = tx.init(params)
  tw = torch.nn.Parameter(torch.tensor(w0))
  if name == "adam":
    topt = torch.optim.Adam([tw], lr=0.05, betas=(0.92, 0.96), eps=1e-8, weight_decay=0.1)
  else:
    topt = torch.optim.SGD([tw], lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    tw.grad = torch.tensor(g)
    topt.step()
  np.testing.assert_allclose(np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_step_decay_schedule():
  c = _config(name="sgd", learning_rate=0.1, decay_every_epochs=2, decay_factor=0.1)
  spe = 5
  assert optim.learning_rates(c, spe, 0)["default"] == pytest.approx(0.1)
  assert optim.learning_rates(c, spe, 9)["default"] == pytest.approx(0.1)
  assert optim.learning_rates(c, spe, 10)["default"] == pytest.approx(0.01)
  assert optim.learning_rates(c, spe, 20)["default"] == pytest.approx(0.001)


def test_bad_optimizer_name():
  with pytest.raises(ValueError, match="adam"):
    optim.create_optimizer(_config(name="rmsprop"), _params(), 1)
