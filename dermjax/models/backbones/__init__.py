"""Backbone CNNs with torchvision-mappable parameter names.

`BACKBONES[arch]` says how to build each ImageNet architecture and which tap is its last
feature map; `dermjax.weights` holds the matching checkpoint key tables. Every backbone takes
NHWC images normalised as for ImageNet and returns a dict of named taps (see each module).
"""

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn

from dermjax.models.backbones.alexnet import AlexNet
from dermjax.models.backbones.densenet import DenseNet
from dermjax.models.backbones.resnet import ResNet
from dermjax.models.backbones.vgg import VGGStages


class Backbone(NamedTuple):
  """How to build one architecture: module(**kw) -> nn.Module; `features`: the last feature map's tap."""

  module: Callable[..., nn.Module]
  features: str
  channels: int


BACKBONES = {
    "alexnet": Backbone(AlexNet, "pool5", 256),
    "vgg16": Backbone(functools.partial(VGGStages, batch_norm=False), "pool5", 512),
    "vgg16_bn": Backbone(functools.partial(VGGStages, batch_norm=True), "pool5", 512),
    "resnet18": Backbone(functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic"), "layer4", 512),
    "resnet50": Backbone(functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)), "layer4", 2048),
    "resnet101": Backbone(functools.partial(ResNet, stage_sizes=(3, 4, 23, 3)), "layer4", 2048),
    "resnext50_32x4d": Backbone(
        functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4), "layer4", 2048),
    "densenet121": Backbone(
        functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
        "features", 1024),
}


# Module fields that count blocks per stage: ResNet residual blocks, DenseNet dense layers.
DEPTH_FIELDS = ("stage_sizes", "block_config")


def shallow(backbone: Backbone, blocks_per_stage: int = 1) -> Backbone:
  """The same architecture with `blocks_per_stage` blocks in every stage (same block type, taps
  and stage widths; a DenseNet's output width follows its depth). Networks without stages
  (VGG, AlexNet) and blocks_per_stage <= 0 come back unchanged."""
  kw = dict(getattr(backbone.module, "keywords", {}))
  depth = [f for f in DEPTH_FIELDS if f in kw]
  if blocks_per_stage <= 0 or not depth:
    return backbone
  kw.update({f: (int(blocks_per_stage),) * len(kw[f]) for f in depth})
  return backbone._replace(module=functools.partial(backbone.module.func, **kw))


def narrow(backbone: Backbone, width: int) -> Backbone:
  """The same architecture at base width `width` (torchvision's: 64): a ResNet's stem and
  stage-1 planes (stage i: width 2^(i-1); ResNeXt keeps its groups, each width / 16 x
  width_per_group / 4 channels wide), a DenseNet's stem features (growth rate width / 2).
  VGG / AlexNet and width <= 0 come back unchanged."""
  kw = dict(getattr(backbone.module, "keywords", {}))
  if width <= 0 or not any(f in kw for f in DEPTH_FIELDS):
    return backbone
  if "stage_sizes" in kw:
    kw["width"] = int(width)
  else:
    kw.update(num_init_features=int(width), growth_rate=max(int(width) // 2, 1))
  return backbone._replace(module=functools.partial(backbone.module.func, **kw))


def build_backbone(arch: str, *, blocks_per_stage: int = 0, width: int = 0, **kw: Any) -> nn.Module:
  """The `arch` backbone; kw sets module fields (num_classes, frozen_bn, dtype, ...);
  blocks_per_stage > 0 cuts every stage to that many blocks (`shallow`) and width > 0 sets
  the base width (`narrow`): the CPU-sized rows' knobs (0: the architecture's own)."""
  if arch not in BACKBONES:
    raise ValueError(f"Unknown backbone {arch!r}; known: {sorted(BACKBONES)}")
  return narrow(shallow(BACKBONES[arch], blocks_per_stage), width).module(**kw)
