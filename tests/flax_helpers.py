"""Shared helpers for tests that need concrete Flax variables without running init."""

import jax
import numpy as np


def random_variables(shapes, seed=0):
  """Concrete variables for abstract ones (cheaper than module.init): He-scaled params, unit BN stats."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "var":
      return np.ones(s.shape, np.float32)
    if name in ("mean", "bias"):
      return np.zeros(s.shape, np.float32)
    fan_in = int(np.prod(s.shape[:-1])) or 1
    return (rng.standard_normal(s.shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)
