"""Plain-PyTorch copies of torchvision's AlexNet, VGG, ResNet and DenseNet (test-only).

torchvision cannot be installed here, so these rebuild its module trees exactly: the same
attribute names and `nn.Sequential` indices, hence the same state-dict keys. Each model's
`taps(x)` returns the NCHW activations dermjax exposes, under dermjax's tap names.
"""

from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
  """torchvision.models.vgg16 / vgg16_bn."""

  def __init__(self, batch_norm: bool, num_classes: int = 1000):
    super().__init__()
    layers, channels = [], 3
    for v in VGG16_CFG:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers.append(nn.Conv2d(channels, v, 3, padding=1))
        if batch_norm:
          layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        channels = v
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, num_classes))

  def taps(self, x):
    out, block = {}, 1
    for layer in self.features:
      if isinstance(layer, nn.MaxPool2d):
        out[f"block{block}"] = x
      x = layer(x)
      if isinstance(layer, nn.MaxPool2d):
        out[f"pool{block}"] = x
        block += 1
    x = torch.flatten(self.avgpool(x), 1)
    out["pre_logits"] = x = self.classifier[:6](x)
    out["logits"] = self.classifier[6](x)
    return out


class AlexNet(nn.Module):
  """torchvision.models.alexnet."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes))

  def taps(self, x):
    out, conv = {}, 0
    for layer in self.features:
      x = layer(x)
      if isinstance(layer, nn.Conv2d):
        conv += 1
      elif isinstance(layer, nn.ReLU):
        out[f"conv{conv}"] = x.clone()
      else:
        out[f"pool{conv}"] = x
    x = torch.flatten(self.avgpool(x), 1)
    out["pre_logits"] = x = self.classifier[:6](x)
    out["logits"] = self.classifier[6](x)
    return out


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
    super().__init__()
    width = int(planes * (base_width / 64.0)) * groups
    self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
  """torchvision.models.resnet18/50/101, resnext50_32x4d."""

  def __init__(self, block, layers, groups=1, width_per_group=64, num_classes=1000):
    super().__init__()
    self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2)
    self.layer3 = self._make_layer(block, 256, layers[2], 2)
    self.layer4 = self._make_layer(block, 512, layers[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
               for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def taps(self, x):
    out = {"stem": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
    x = out["stem"]
    for i in range(1, 5):
      for j, block in enumerate(getattr(self, f"layer{i}")):
        out[f"layer{i}_{j}"] = x = block(x)
      out[f"layer{i}"] = x
    out["pre_logits"] = x = torch.flatten(self.avgpool(x), 1)
    out["logits"] = self.fc(x)
    return out


class _DenseLayer(nn.Module):

  def __init__(self, num_input_features, growth_rate, bn_size):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(num_input_features)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

  def forward(self, features):
    x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
    return self.conv2(self.relu2(self.norm2(x)))


class _DenseBlock(nn.ModuleDict):

  def __init__(self, num_layers, num_input_features, bn_size, growth_rate):
    super().__init__()
    for i in range(num_layers):
      self.add_module(f"denselayer{i + 1}",
                      _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size))

  def forward(self, x):
    features = [x]
    for layer in self.values():
      features.append(layer(features))
    return torch.cat(features, 1)


class _Transition(nn.Sequential):

  def __init__(self, num_input_features, num_output_features):
    super().__init__()
    self.norm = nn.BatchNorm2d(num_input_features)
    self.relu = nn.ReLU(inplace=True)
    self.conv = nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
    self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
  """torchvision.models.densenet121."""

  def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
               num_classes=1000):
    super().__init__()
    self.features = nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(3, num_init_features, 7, 2, 3, bias=False)),
        ("norm0", nn.BatchNorm2d(num_init_features)),
        ("relu0", nn.ReLU(inplace=True)),
        ("pool0", nn.MaxPool2d(3, 2, 1)),
    ]))
    num_features = num_init_features
    for i, num_layers in enumerate(block_config):
      self.features.add_module(f"denseblock{i + 1}",
                               _DenseBlock(num_layers, num_features, bn_size, growth_rate))
      num_features += num_layers * growth_rate
      if i != len(block_config) - 1:
        self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
        num_features //= 2
    self.features.add_module("norm5", nn.BatchNorm2d(num_features))
    self.classifier = nn.Linear(num_features, num_classes)

  def taps(self, x):
    out = {}
    for name, layer in self.features.named_children():
      x = layer(x)
      if name == "pool0":
        out["stem"] = x
      elif name.startswith(("denseblock", "transition")):
        out[name] = x
    out["features"] = x = F.relu(x)
    out["pre_logits"] = x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    out["logits"] = self.classifier(x)
    return out


def build(arch: str) -> nn.Module:
  """The torchvision-equivalent model for a dermjax arch name, eval mode."""
  models = {
      "alexnet": lambda: AlexNet(),
      "vgg16": lambda: VGG(batch_norm=False),
      "vgg16_bn": lambda: VGG(batch_norm=True),
      "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2)),
      "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
      "resnet101": lambda: ResNet(Bottleneck, (3, 4, 23, 3)),
      "resnext50_32x4d": lambda: ResNet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4),
      "densenet121": lambda: DenseNet(),
  }
  return models[arch]().eval()


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every BN non-trivial affine params and running stats, and every bias random values."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
      elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
  return model
