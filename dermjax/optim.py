"""Optimiser from `config.optim`: Adam or SGD, torch-style L2 weight decay, per-module rates.

Per-module learning rates: `config.optim.groups` maps a group name to (regex, rate); a
parameter belongs to the group whose regex matches (`re.search`) its "/"-joined path
(e.g. "encoder/block1/conv1/kernel"), or to the "default" group (rate
`config.optim.learning_rate`) if none does. A parameter matched by two groups is an error.
A group with rate 0 is frozen: `optax.set_to_zero()` (no optimiser state, no update).
"""

import re

import jax
import optax

DEFAULT_GROUP = "default"


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def group_rates(optim_config) -> dict:
  """{group name: learning rate} including the "default" group."""
  rates = {DEFAULT_GROUP: float(optim_config.learning_rate)}
  for name, spec in optim_config.groups.items():
    if name == DEFAULT_GROUP:
      raise ValueError(f"config.optim.groups: the name {DEFAULT_GROUP!r} is reserved")
    if len(spec) != 2:
      raise ValueError(f"config.optim.groups.{name} must be (regex, learning rate), got {spec!r}")
    rates[name] = float(spec[1])
  return rates


def param_labels(params, optim_config):
  """Pytree like `params` with each leaf's group name (see the module docstring)."""
  patterns = {name: re.compile(spec[0]) for name, spec in optim_config.groups.items()}

  def label(path, _):
    name = _path(path)
    hits = [g for g, pattern in patterns.items() if pattern.search(name)]
    if len(hits) > 1:
      raise ValueError(f"config.optim.groups: parameter {name!r} matches several groups {hits}; "
                       "make the regexes disjoint")
    return hits[0] if hits else DEFAULT_GROUP

  return jax.tree_util.tree_map_with_path(label, params)


def trainable_mask(params, optim_config):
  """Pytree of bools like `params`: True where the parameter's group rate is not 0."""
  rates = group_rates(optim_config)
  labels = param_labels(params, optim_config)
  return jax.tree.map(lambda g: rates[g] != 0.0, labels)


def schedule(rate: float, optim_config, steps_per_epoch: int):
  """Constant `rate`, or step decay by `decay_factor` every `decay_every_epochs` epochs."""
  every = int(optim_config.decay_every_epochs)
  if every <= 0:
    return optax.constant_schedule(rate)
  return optax.exponential_decay(rate, transition_steps=every * steps_per_epoch,
                                 decay_rate=float(optim_config.decay_factor), staircase=True)


def _group_transform(rate, optim_config, steps_per_epoch):
  lr = schedule(rate, optim_config, steps_per_epoch)
  decay = [optax.add_decayed_weights(optim_config.weight_decay)] if optim_config.weight_decay else []
  name = optim_config.name
  if name == "adam":
    core = optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2, eps=1e-8)
  elif name == "sgd":
    # torch SGD: buf = momentum * buf + (g + wd * p); p -= lr * buf (optax.trace, no
    # dampening); nesterov: p -= lr * (g + wd * p + momentum * buf), as torch's.
    core = optax.trace(decay=optim_config.momentum, nesterov=bool(optim_config.get("nesterov", False)))
  else:
    raise ValueError(f"config.optim.name must be 'adam' or 'sgd', got {name!r}")
  return optax.chain(*decay, core, optax.scale_by_learning_rate(lr))


def create_optimizer(optim_config, params, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimiser for `params` (used for the group labels only) as `config.optim` says."""
  rates = group_rates(optim_config)
  transforms = {g: optax.set_to_zero() if rate == 0.0 else
                _group_transform(rate, optim_config, steps_per_epoch)
                for g, rate in rates.items()}
  return optax.multi_transform(transforms, param_labels(params, optim_config))


def learning_rates(optim_config, steps_per_epoch: int, step: int) -> dict:
  """{group: learning rate at `step`} for logging."""
  return {g: float(schedule(r, optim_config, steps_per_epoch)(step))
          for g, r in group_rates(optim_config).items()}
