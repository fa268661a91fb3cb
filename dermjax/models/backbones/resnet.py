"""ResNet-18/50/101 and ResNeXt-50 (32x4d), torchvision layout (stride on the 3x3), NHWC.

One generic `ResNet` built from `BasicBlock` or `Bottleneck` residual blocks. Parameters:
  conv1, bn1                                         the 7x7 stem
  layer{i}_{j}/conv1, bn1, conv2, bn2[, conv3, bn3]  block j (from 0) of stage i (1..4)
  layer{i}_{j}/downsample_conv, downsample_bn        the projection shortcut, where needed
  fc                                                 the classifier (only with num_classes)
  layer{i}_{j}_{block_module_name}/...               the optional per-block module (below)
so a torchvision/timm state dict maps on by a fixed table (`dermjax.weights`).
BasicBlock and Bottleneck repeat each other's field list and conv/norm set-up on purpose:
they mirror torchvision's two block classes one to one, which keeps the key table and the
parity tests readable.

`block_module`: an optional factory `block_module(name=...) -> nn.Module` whose module is
applied to the output of every residual block, `x -> module(x)`, the result being the next
block's input and the block's tap (ZooME's Zoom-SE; None: nothing is inserted, the network
and its parameters are exactly torchvision's).
"""

import functools
from typing import Any, Callable, ClassVar, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dermjax.models.backbones.layers import batch_norm, grouped_conv_general_dilated

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
  """Two 3x3 convs + identity/projection: [B, H, W, C] -> [B, H/s, W/s, features]."""

  features: int
  strides: int = 1
  groups: int = 1
  width_per_group: int = 64
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.groups != 1 or self.width_per_group != 64:
      raise ValueError("BasicBlock supports only groups=1, width_per_group=64 (as torchvision).")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    norm = functools.partial(batch_norm, train, self.frozen_bn, self.dtype)
    y = conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = norm("bn2")(conv(self.features, (3, 3), padding=1, name="conv2")(y))
    return nn.relu(y + shortcut(x, self.features, self.strides, conv, norm))


class Bottleneck(nn.Module):
  """1x1 -> grouped 3x3 (stride here) -> 1x1 (x4): [B, H, W, C] -> [B, H/s, W/s, 4 features]."""

  features: int
  strides: int = 1
  groups: int = 1
  width_per_group: int = 64
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    width = int(self.features * (self.width_per_group / 64.0)) * self.groups
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    norm = functools.partial(batch_norm, train, self.frozen_bn, self.dtype)
    y = nn.relu(norm("bn1")(conv(width, (1, 1), name="conv1")(x)))
    y = conv(width, (3, 3), self.strides, padding=1, feature_group_count=self.groups,
             conv_general_dilated=grouped_conv_general_dilated, name="conv2")(y)
    y = nn.relu(norm("bn2")(y))
    y = norm("bn3")(conv(self.features * self.expansion, (1, 1), name="conv3")(y))
    return nn.relu(y + shortcut(x, self.features * self.expansion, self.strides, conv, norm))


def shortcut(x, features, strides, conv, norm):
  """Identity, or 1x1 strided conv + BN where the shape changes (torchvision's `downsample`)."""
  if strides == 1 and x.shape[-1] == features:
    return x
  return norm("downsample_bn")(conv(features, (1, 1), strides, name="downsample_conv")(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """ResNet / ResNeXt. Input [B, H, W, 3] (ImageNet-normalised); returns a dict of taps:

    stem          [B, H/4, W/4, width]    after the stem's max pool
    layer{i}_{j}  output of block j of stage i (i = 1..4, j from 0; after the block_module)
    layer{i}      output of stage i: [B, H/2^(i+1), W/2^(i+1), width 2^(i-1) expansion]
    pre_logits    [B, C] global average of layer4, and logits [B, num_classes] (with num_classes)
  At 224 px layer4 is [B, 7, 7, 512] (ResNet-18) or [B, 7, 7, 2048] (the others); `width`
  (torchvision: 64) scales every stage (tests narrow it).
  """

  stage_sizes: Sequence[int]
  block: str = "bottleneck"
  groups: int = 1
  width_per_group: int = 64
  num_classes: Optional[int] = None
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  block_module: Optional[Callable[..., nn.Module]] = None
  block_module_name: str = "module"
  width: int = 64               # stem channels and stage 1's planes (stage i: width 2^(i-1)).

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.block not in BLOCKS:
      raise ValueError(f"Unknown ResNet block {self.block!r}; known: {sorted(BLOCKS)}")
    block = functools.partial(BLOCKS[self.block], groups=self.groups, width_per_group=self.width_per_group,
                              frozen_bn=self.frozen_bn, dtype=self.dtype)
    x = nn.Conv(self.width, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                name="conv1")(x)
    x = nn.relu(batch_norm(train, self.frozen_bn, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    taps = {"stem": x}
    for i, num_blocks in enumerate(self.stage_sizes, start=1):
      for j in range(num_blocks):
        strides = 2 if i > 1 and j == 0 else 1
        x = block(self.width * 2**(i - 1), strides, name=f"layer{i}_{j}")(x, train=train)
        if self.block_module is not None:
          x = self.block_module(name=f"layer{i}_{j}_{self.block_module_name}")(x)
        taps[f"layer{i}_{j}"] = x
      taps[f"layer{i}"] = x
    if self.num_classes is not None:
      taps["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
      taps["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return taps
