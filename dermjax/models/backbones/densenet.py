"""DenseNet-121 (and the torchvision DenseNet family), torchvision layout, NHWC.

Parameters mirror torchvision's `features.*` names:
  conv0, norm0                                           the 7x7 stem
  denseblock{i}/denselayer{j}/norm1, conv1, norm2, conv2  (i, j from 1)
  transition{i}/norm, conv                               between dense blocks
  norm5                                                  the final BN
  classifier                                             (only with num_classes)
DenseLayer / DenseBlock / DenseNet mirror torchvision's classes one to one (hence their
repeated field lists), which keeps the key table and the parity tests readable.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dermjax.models.backbones.layers import batch_norm

# torchvision's kaiming_normal_ (fan_in, gain sqrt(2)) for DenseNet convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size x growth) - BN-ReLU-3x3 conv: [B, H, W, C] -> [B, H, W, growth_rate]."""

  growth_rate: int
  bn_size: int = 4
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    norm = functools.partial(batch_norm, train, self.frozen_bn, self.dtype)
    x = conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(nn.relu(norm("norm1")(x)))
    return conv(self.growth_rate, (3, 3), padding=1, name="conv2")(nn.relu(norm("norm2")(x)))


class DenseBlock(nn.Module):
  """`num_layers` DenseLayers, each fed the concatenation of all before: C -> C + n growth_rate."""

  num_layers: int
  growth_rate: int
  bn_size: int = 4
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for j in range(1, self.num_layers + 1):
      y = DenseLayer(self.growth_rate, self.bn_size, self.frozen_bn, self.dtype, name=f"denselayer{j}")(
          x, train=train)
      x = jnp.concatenate([x, y], axis=-1)
    return x


class Transition(nn.Module):
  """BN-ReLU-1x1 conv-2x2 avg pool: [B, H, W, C] -> [B, H/2, W/2, features]."""

  features: int
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.relu(batch_norm(train, self.frozen_bn, self.dtype, "norm")(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet. Input [B, H, W, 3] (ImageNet-normalised, H, W >= 32); returns a dict of taps:

    stem            [B, H/4, W/4, num_init_features]   after the stem's max pool
    denseblock{i}   output of dense block i (before its transition)
    transition{i}   output of transition i (i < number of blocks)
    features        ReLU(norm5(last dense block)): [B, H/32, W/32, 1024] for DenseNet-121
    pre_logits      [B, C] its global average, and logits [B, num_classes] (with num_classes)
  """

  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  num_classes: Optional[int] = None
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.Conv(self.num_init_features, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype,
                kernel_init=conv_init, name="conv0")(x)
    x = nn.relu(batch_norm(train, self.frozen_bn, self.dtype, "norm0")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    taps = {"stem": x}
    for i, num_layers in enumerate(self.block_config, start=1):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.frozen_bn, self.dtype,
                     name=f"denseblock{i}")(x, train=train)
      taps[f"denseblock{i}"] = x
      if i < len(self.block_config):
        x = Transition(x.shape[-1] // 2, self.frozen_bn, self.dtype, name=f"transition{i}")(x, train=train)
        taps[f"transition{i}"] = x
    taps["features"] = x = nn.relu(batch_norm(train, self.frozen_bn, self.dtype, "norm5")(x))
    if self.num_classes is not None:
      taps["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
      taps["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, bias_init=nn.initializers.zeros,
                                name="classifier")(x)
    return taps
