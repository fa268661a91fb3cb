"""Checkpoint key tables: how each torch layer's tensors become dermjax Flax leaves.

A *kind* (`KINDS`) lists the tensors of one torch layer and how each becomes a Flax leaf
(conv OIHW -> HWIO, BN affine + running stats, dense [O, I] -> [I, O], torchvision VGG's /
AlexNet's NCHW-flattened first classifier layer and timm VGG's conv-ified fc6/fc7 ->
NHWC-flattened dense kernels). A *table* (`TABLES[arch](source_format)`) lists rows
(dermjax module path, torch module prefix, kind) for an architecture's body and classifier
head. `dermjax.weights` reads checkpoints through these tables.
"""

import functools
from typing import Callable, NamedTuple

import numpy as np

from dermjax.models.backbones.alexnet import ALEXNET_CONVS
from dermjax.models.backbones.vgg import VGG16_BLOCKS

# ----------------------------------------------------------------------------- kinds


class Field(NamedTuple):
  """One torch tensor of a layer: `torch_name` -> variables[collection][path/leaf]."""

  torch_name: str
  collection: str
  leaf: str
  to_flax: Callable[[np.ndarray], np.ndarray]    # torch tensor -> Flax leaf
  torch_shape: Callable[[tuple], tuple]         # Flax leaf shape -> expected torch shape


def _same(x):
  return x


def _conv(w):  # [O, I, kh, kw] -> [kh, kw, I, O]
  return w.transpose(2, 3, 1, 0)


def _conv_shape(s):
  return (s[3], s[2], s[0], s[1])


def _transpose(w, tile: int = 512):
  """w.T [I, O] of a 2-D [O, I] as a contiguous array, copied tile by tile.

  numpy's one-shot strided copy is several times slower for VGG's 100M-entry fc6.
  """
  out = np.empty(w.shape[::-1], w.dtype)
  for i in range(0, w.shape[0], tile):
    for j in range(0, w.shape[1], tile):
      out[j:j + tile, i:i + tile] = w[i:i + tile, j:j + tile].T
  return out


def _dense(w):  # [O, I] -> [I, O]
  return _transpose(w)


def _dense_shape(s):
  return (s[1], s[0])


def _nchw_dense(w, k: int = 7):
  """[O, C*k*k] or [O, C, k, k] over an NCHW k x k map -> [k*k*C, O] over its NHWC flattening."""
  o = w.shape[0]
  w = _transpose(w.reshape(o, -1))                # [C*k*k, O], rows in (c, h, w) order
  return w.reshape(-1, k, k, o).transpose(1, 2, 0, 3).reshape(-1, o)


def _conv_dense_shape(window: int):
  """Flax [k*k*C, O] -> torch conv weight [O, C, k, k] (timm's conv-ified VGG fc layers)."""

  def torch_shape(s):
    return (s[1], s[0] // (window * window), window, window)

  return torch_shape


def _conv1_dense(w):  # [O, I, 1, 1] -> [I, O]
  return _transpose(w.reshape(w.shape[:2]))


def _affine(to_flax, torch_shape):
  """A layer with weight -> kernel (converted by to_flax) and bias -> bias."""
  return (Field("weight", "params", "kernel", to_flax, torch_shape),
          Field("bias", "params", "bias", _same, _same))


KINDS = {
    "conv": _affine(_conv, _conv_shape),
    "dense": _affine(_dense, _dense_shape),
    "dense_nchw7": _affine(_nchw_dense, _dense_shape),             # torchvision VGG classifier.0
    "dense_nchw6": _affine(functools.partial(_nchw_dense, k=6), _dense_shape),  # AlexNet classifier.1
    "conv7_dense": _affine(_nchw_dense, _conv_dense_shape(7)),     # timm VGG pre_logits.fc1
    "conv1_dense": _affine(_conv1_dense, _conv_dense_shape(1)),    # timm VGG pre_logits.fc2
    "bn": (
        Field("weight", "params", "scale", _same, _same),
        Field("bias", "params", "bias", _same, _same),
        Field("running_mean", "batch_stats", "mean", _same, _same),
        Field("running_var", "batch_stats", "var", _same, _same),
    ),
}

# ----------------------------------------------------------------------------- tables

class Table(NamedTuple):
  """Rows (dermjax module path, torch module prefix, kind) for the body and the classifier head.

  The last head row's weight gives the class count. Rows whose Flax leaves the architecture
  lacks are skipped, so a table may list optional layers.
  """

  body: list
  head: list


def vgg_table(batch_norm: bool, source_format: str) -> Table:
  """VGG-16(-BN): `features.N` counted as torchvision builds it (conv[, bn], relu per conv; pool)."""
  body, index = [], 0
  for b, (_, num_convs) in enumerate(VGG16_BLOCKS, start=1):
    for k in range(1, num_convs + 1):
      body.append((f"block{b}/conv{k}", f"features.{index}", "conv"))
      if batch_norm:
        body.append((f"block{b}/bn{k}", f"features.{index + 1}", "bn"))
      index += 3 if batch_norm else 2
    index += 1  # max pool
  head = {
      "torchvision": [("head/fc6", "classifier.0", "dense_nchw7"), ("head/fc7", "classifier.3", "dense"),
                      ("head/fc8", "classifier.6", "dense")],
      "timm": [("head/fc6", "pre_logits.fc1", "conv7_dense"), ("head/fc7", "pre_logits.fc2", "conv1_dense"),
               ("head/fc8", "head.fc", "dense")],
  }[source_format]
  return Table(body, head)


def resnet_table(stage_sizes, bottleneck: bool, source_format: str) -> Table:
  """ResNet/ResNeXt: identical names in torchvision and timm."""
  del source_format
  body = [("conv1", "conv1", "conv"), ("bn1", "bn1", "bn")]
  for i, num_blocks in enumerate(stage_sizes, start=1):
    for j in range(num_blocks):
      path, prefix = f"layer{i}_{j}", f"layer{i}.{j}"
      for k in range(1, 4 if bottleneck else 3):
        body += [(f"{path}/conv{k}", f"{prefix}.conv{k}", "conv"), (f"{path}/bn{k}", f"{prefix}.bn{k}", "bn")]
      if j == 0:  # Rows whose leaves the architecture lacks are skipped (layer1 of ResNet-18).
        body += [(f"{path}/downsample_conv", f"{prefix}.downsample.0", "conv"),
                 (f"{path}/downsample_bn", f"{prefix}.downsample.1", "bn")]
  return Table(body, [("fc", "fc", "dense")])


def densenet_table(block_config, source_format: str) -> Table:
  """DenseNet: identical (modern) names in torchvision and timm."""
  del source_format
  body = [("conv0", "features.conv0", "conv"), ("norm0", "features.norm0", "bn")]
  for i, num_layers in enumerate(block_config, start=1):
    for j in range(1, num_layers + 1):
      path, prefix = f"denseblock{i}/denselayer{j}", f"features.denseblock{i}.denselayer{j}"
      body += [(f"{path}/{name}", f"{prefix}.{name}", kind)
               for name, kind in (("norm1", "bn"), ("conv1", "conv"), ("norm2", "bn"), ("conv2", "conv"))]
    if i < len(block_config):
      body += [(f"transition{i}/norm", f"features.transition{i}.norm", "bn"),
               (f"transition{i}/conv", f"features.transition{i}.conv", "conv")]
  body.append(("norm5", "features.norm5", "bn"))
  return Table(body, [("classifier", "classifier", "dense")])


def alexnet_table(source_format: str) -> Table:
  """AlexNet: torchvision's `features.N` (conv, relu[, pool]) and `classifier.1/4/6` (timm has none)."""
  del source_format
  body, index = [], 0
  for k, (_, _, _, _, pool) in enumerate(ALEXNET_CONVS, start=1):
    body.append((f"conv{k}", f"features.{index}", "conv"))
    index += 3 if pool else 2
  head = [("head/fc6", "classifier.1", "dense_nchw6"), ("head/fc7", "classifier.4", "dense"),
          ("head/fc8", "classifier.6", "dense")]
  return Table(body, head)


TABLES = {
    "alexnet": alexnet_table,
    "vgg16": functools.partial(vgg_table, False),
    "vgg16_bn": functools.partial(vgg_table, True),
    "resnet18": functools.partial(resnet_table, (2, 2, 2, 2), False),
    "resnet50": functools.partial(resnet_table, (3, 4, 6, 3), True),
    "resnet101": functools.partial(resnet_table, (3, 4, 23, 3), True),
    "resnext50_32x4d": functools.partial(resnet_table, (3, 4, 6, 3), True),
    "densenet121": functools.partial(densenet_table, (6, 12, 24, 16)),
}
