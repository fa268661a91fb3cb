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
import jax
import jax.numpy as jnp

from dermjax.models.backbones.layers import batch_norm

# (output channels, convolutions) per block.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


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
      x = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name=f"conv{k}")(x)
      if self.batch_norm:
        x = batch_norm(train, self.frozen_bn, self.dtype, f"bn{k}")(x)
      x = nn.relu(x)
    return x


def max_pool(x):
  """2x2 max pool, stride 2: [B, H, W, C] -> [B, H/2, W/2, C]."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def adaptive_avg_pool(x, size: int):
  """torch's AdaptiveAvgPool2d(size): [B, H, W, C] -> [B, size, size, C].

  Output cell i averages rows floor(i H / size) .. ceil((i + 1) H / size) - 1 (same for
  columns), so smaller maps are replicated and larger ones averaged exactly as in torch.
  """

  def pool_axis(x, axis):
    n = x.shape[axis]
    if n == size:
      return x
    cells = [
        jnp.mean(jax.lax.slice_in_dim(x, (i * n) // size, -((-(i + 1) * n) // size), axis=axis),
                 axis=axis, keepdims=True)
        for i in range(size)
    ]
    return jnp.concatenate(cells, axis=axis)

  return pool_axis(pool_axis(x, 1), 2)


class VGGClassifierHead(nn.Module):
  """torchvision's VGG classifier: [B, H, W, 512] pool5 -> {"pre_logits": [B, 4096], "logits": [B, K]}.

  Adaptive average pool to 7x7, flatten (NHWC order; `dermjax.weights` permutes torch's
  NCHW-flattened `classifier.0` accordingly), then fc6 -> ReLU -> dropout -> fc7 -> ReLU ->
  dropout -> fc8. Dropout needs a "dropout" rng when `train`.
  """

  num_classes: int = 1000
  hidden: int = 4096
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
      x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name=name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
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
