"""ZooME (Xing et al.): Zoom-SE after every residual block + metadata embedding (Sec. III).

  image [B, S, S, 3] -> backbone (ResNeXt-50 32x4d / ResNet-50 with a ZoomSE module at the end
  of every residual block, or AlexNet) -> last feature map x [B, h, w, N]
  metadata: age / sex / site -> dermjax.data.metadata.encode m [B, M] -> two FC layers ->
  t [B, N] in (0, 1) -> o = t * x channel-wise (eq. 4); without metadata o = x
  -> head: global average pool + one FC (ResNet family), or torchvision's AlexNet classifier
  (6x6 average pool, fc6, fc7, new fc8) -> one logit; sigmoid = P(melanoma).

Zoom-SE (eqs. 1-3) on u [B, H, W, C]: z = 4x4 adaptive max pool (`pool_size`), s = mean of z
over its 4x4 (eq. 1), then
  reading "se" (default):  q = sigmoid(W2 ReLU(W1 s)), x = q * u     (an SE block)
  reading "literal":       q = ReLU(W2 ReLU(W1 s)),    x = s * u     (eqs. 2-3 as printed;
                           q is computed but unused, so W1, W2 get no gradient)
with W1: C -> C / r, W2: C / r -> C (r = `reduction`, 16).

At evaluation the outputs also hold "cam" [B, h, w] (Grad-CAM of the logit on o; for the
GAP + FC head this is the class activation map through a ReLU) and, with metadata,
"logits_without_metadata" [B, 1]: the same image with every metadata field missing.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dermjax.data import metadata as metadata_lib
from dermjax.models.backbones import BACKBONES, build_backbone
from dermjax.models.backbones.layers import adaptive_pool, argmax_max
from dermjax.models.backbones.resnet import ResNet
from dermjax.models.backbones.vgg import VGGClassifierHead
from dermjax.models.common import gradcam

READINGS = ("se", "literal")
# The paper's backbones; any BACKBONES name builds (Zoom-SE needs a ResNet / ResNeXt).
ARCHS = ("resnext50_32x4d", "resnet50", "alexnet")


def _residual(arch: str) -> bool:
  return getattr(BACKBONES[arch].module, "func", None) is ResNet


class ZoomSE(nn.Module):
  """Eqs. 1-3: u [B, H, W, C] -> x [B, H, W, C] (see the module docstring for both readings)."""

  reduction: int = 16
  pool_size: int = 4
  reading: str = "se"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u):
    if self.reading not in READINGS:
      raise ValueError(f"Zoom-SE reading must be one of {READINGS}, got {self.reading!r}")
    channels = u.shape[-1]
    z = adaptive_pool(u.astype(jnp.float32), self.pool_size, argmax_max)   # zoom-in [B, P, P, C]
    s = jnp.mean(z, axis=(1, 2))                                           # eq. 1 [B, C]
    hidden = nn.relu(nn.Dense(max(channels // self.reduction, 1), dtype=self.dtype, name="fc1")(s))
    q = nn.Dense(channels, dtype=self.dtype, name="fc2")(hidden).astype(jnp.float32)   # eq. 2
    if self.reading == "se":
      return u * nn.sigmoid(q)[:, None, None, :].astype(u.dtype)
    del q  # The literal eq. 3 multiplies by s (q = ReLU(W2 ...) is not used).
    return u * s[:, None, None, :].astype(u.dtype)


class MetadataEmbedding(nn.Module):
  """Eq. 4's t: metadata features m [B, M] -> t [B, channels] in (0, 1).

  Two FC layers (M -> hidden, ReLU, hidden -> channels) and a sigmoid, so t re-weights the
  feature map's channels as an SE gate does (the paper gives neither width nor activation).
  """

  channels: int
  hidden: int = 128

  @nn.compact
  def __call__(self, m):
    h = nn.relu(nn.Dense(self.hidden, name="fc1")(m))
    return nn.sigmoid(nn.Dense(self.channels, name="fc2")(h))


class GAPHead(nn.Module):
  """Global average pool + one dense layer: o [B, h, w, N] -> logits [B, K]."""

  num_classes: int = 1

  @nn.compact
  def __call__(self, o, *, train: bool = False):
    del train
    return nn.Dense(self.num_classes, name="fc")(jnp.mean(o, axis=(1, 2)))


class AlexNetHead(nn.Module):
  """torchvision's AlexNet classifier with a new fc8: o [B, h, w, 256] -> logits [B, K]."""

  num_classes: int = 1
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, o, *, train: bool = False):
    return VGGClassifierHead(self.num_classes, dropout_rate=self.dropout_rate, pool_size=6,
                             dropout_first=True, name="classifier")(o, train=train)["logits"]


class ZooME(nn.Module):
  """Model batch (image, age, sex, site) -> {"logits": [B, K]} (+ "cam", "logits_without_metadata"
  at evaluation; see the module docstring)."""

  arch: str = "resnext50_32x4d"
  zoom_se: bool = True
  metadata: bool = True
  num_classes: int = 1
  reduction: int = 16
  pool_size: int = 4
  reading: str = "se"
  metadata_hidden: int = 128
  blocks_per_stage: int = 0     # > 0: the backbone cut to this many blocks per stage (CPU rows).
  backbone_width: int = 0       # > 0: its base width (backbones.narrow; CPU rows).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    if self.arch not in BACKBONES:
      raise ValueError(f"ZooME backbone must be one of {sorted(BACKBONES)}, got {self.arch!r}")
    kw = {}
    if self.zoom_se:
      if not _residual(self.arch):
        raise ValueError(f"Zoom-SE sits at the end of residual blocks: {self.arch!r} is no ResNet / ResNeXt")
      kw = dict(block_module=functools.partial(ZoomSE, self.reduction, self.pool_size, self.reading,
                                               self.dtype), block_module_name="zoom_se")
    taps = build_backbone(self.arch, blocks_per_stage=self.blocks_per_stage,
                          width=self.backbone_width, dtype=self.dtype, name="backbone", **kw)(
        batch["image"].astype(self.dtype), train=train)
    x = taps[BACKBONES[self.arch].features].astype(jnp.float32)            # [B, h, w, N]
    head = (AlexNetHead(self.num_classes, name="head") if self.arch == "alexnet"
            else GAPHead(self.num_classes, name="head"))
    embed = MetadataEmbedding(x.shape[-1], self.metadata_hidden, name="metadata")
    o = x
    if self.metadata:
      t = embed(metadata_lib.encode_batch(batch))                          # [B, N]
      o = t[:, None, None, :] * x                                          # eq. 4
    if train:
      return {"logits": head(o, train=True)}
    logits, cam = gradcam.head_grad_cam(head, o)
    outputs = {"logits": logits, "cam": cam}
    if self.metadata:
      size = x.shape[0]
      missing = metadata_lib.encode(jnp.full((size,), jnp.nan), jnp.full((size,), -1),
                                    jnp.full((size,), -1))
      outputs["logits_without_metadata"] = head(embed(missing)[:, None, None, :] * x)
    return outputs


def pretrained_targets(arch: str) -> dict:
  """`model.pretrained_targets` for an ImageNet checkpoint of `arch`: every torchvision layer of
  the backbone (not the Zoom-SE modules), and AlexNet's fc6 / fc7 (fc8 and the FC are new)."""
  if arch == "alexnet":
    targets = {f"backbone/conv{k}": f"conv{k}" for k in range(1, 6)}
    targets.update({f"head/classifier/{fc}": f"head/{fc}" for fc in ("fc6", "fc7")})
    return targets
  if not _residual(arch):
    raise ValueError(f"no ImageNet pretrained_targets for ZooME on {arch!r}")
  stage_sizes = BACKBONES[arch].module.keywords["stage_sizes"]
  paths = ["conv1", "bn1"] + [f"layer{i}_{j}" for i, n in enumerate(stage_sizes, start=1)
                              for j in range(n)]
  return {f"backbone/{p}": p for p in paths}
