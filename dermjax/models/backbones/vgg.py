"""VGG-16 / VGG-16-BN as five addressable blocks (torchvision layout, NHWC).

Parameters are named `block{b}/conv{k}` and `block{b}/bn{k}` (b = 1..5, k = 1..3) so a
torchvision `features.N` checkpoint maps onto them by a fixed table
(`dermjax.weights`). Any subset of blocks can be instantiated: the gaze model's encoder is
blocks (1, 2, 3), its diagnosis branch blocks (4, 5); both load from one checkpoint.
With `num_classes` set, the torchvision classifier (`VGGClassifierHead`, params
`head/fc6`, `head/fc7`, `head/fc8`) follows pool5.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dermjax.models.backbones.layers import adaptive_pool, batch_norm

# (output channels, convolutions) per block.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# torchvision's VGG init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), bias 0. Flax's
# default (LeCun, variance 1 / fan_in) halves the signal's variance at every ReLU, so the
# plain VGG-16 (no BN) trained from scratch starts with a vanishing signal after 13 layers.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class VGGBlock(nn.Module):
  """`num_convs` x (3x3 conv [+ BN] + ReLU). [B, H, W, C] -> [B, H, W, features] (not pooled)."""

  features: int
  num_convs: int
  batch_norm: bool = True
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for k in range(1, self.num_convs + 1):
      x = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, kernel_init=conv_init,
                  name=f"conv{k}")(x)
      if self.batch_norm:
        x = batch_norm(train, self.frozen_bn, self.dtype, f"bn{k}")(x)
      x = nn.relu(x)
    return x


def max_pool(x):
  """2x2 max pool, stride 2: [B, H, W, C] -> [B, H/2, W/2, C]."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def adaptive_avg_pool(x, size: int):
  """torch's AdaptiveAvgPool2d(size): [B, H, W, C] -> [B, size, size, C] (layers.adaptive_pool)."""
  return adaptive_pool(x, size, jnp.mean)


class VGGClassifierHead(nn.Module):
  """torchvision's VGG / AlexNet classifier: [B, H, W, C] -> {"pre_logits": [B, 4096], "logits": [B, K]}.

  Adaptive average pool to pool_size^2 (VGG 7, AlexNet 6), flatten (NHWC order;
  `dermjax.weights` permutes torch's NCHW-flattened first layer accordingly), then
  fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8 (VGG), or with `dropout_first`
  dropout -> fc6 -> ReLU -> dropout -> fc7 -> ReLU -> fc8 (AlexNet). Dropout needs a
  "dropout" rng when `train`.
  """

  num_classes: int = 1000
  hidden: int = 4096
  dropout_rate: float = 0.5
  pool_size: int = 7
  dropout_first: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = adaptive_avg_pool(x, self.pool_size).reshape(x.shape[0], -1)
    dropout = lambda x: nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    for name in ("fc6", "fc7"):
      x = dropout(x) if self.dropout_first else x
      x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name=name)(x))
      x = x if self.dropout_first else dropout(x)
    return {"pre_logits": x, "logits": nn.Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)}


class VGGStages(nn.Module):
  """The chosen VGG-16 blocks run in order.

  Input [B, H, W, C]; returns a dict with, for each block b run, `block{b}` (pre-pool
  features, [B, H/2^(b-1)/.., C_b]) and `pool{b}` (pooled). For the full network at 224 px:
  pool3 [B, 28, 28, 256], pool4 [B, 14, 14, 512], pool5 [B, 7, 7, 512].
  With `num_classes` (needs block 5) the dict also holds the `VGGClassifierHead` outputs
  `pre_logits` [B, 4096] and `logits` [B, num_classes].
  """

  blocks: Sequence[int] = (1, 2, 3, 4, 5)
  batch_norm: bool = True
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  num_classes: Optional[int] = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.num_classes is not None and tuple(self.blocks)[-1:] != (5,):
      raise ValueError(f"VGGClassifierHead follows pool5; blocks {tuple(self.blocks)} do not end with 5.")
    taps = {}
    for b in self.blocks:
      features, num_convs = VGG16_BLOCKS[b - 1]
      x = VGGBlock(features, num_convs, self.batch_norm, self.frozen_bn, self.dtype, name=f"block{b}")(
          x, train=train)
      taps[f"block{b}"] = x
      x = max_pool(x)
      taps[f"pool{b}"] = x
    if self.num_classes is not None:
      taps.update(VGGClassifierHead(self.num_classes, dtype=self.dtype, name="head")(x, train=train))
    return taps
