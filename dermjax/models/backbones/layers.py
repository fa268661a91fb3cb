"""Layers shared by the backbones and the models built on them."""

from typing import Any

import flax.linen as nn


def batch_norm(train: bool, frozen: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """torch's BatchNorm2d defaults (momentum 0.1, eps 1e-5); frozen -> always running stats."""
  return nn.BatchNorm(use_running_average=not train or frozen, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)
