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


def build_backbone(arch: str, **kw: Any) -> nn.Module:
  """The `arch` backbone; kw sets module fields (num_classes, frozen_bn, dtype, ...)."""
  if arch not in BACKBONES:
    raise ValueError(f"Unknown backbone {arch!r}; known: {sorted(BACKBONES)}")
  return BACKBONES[arch].module(**kw)
