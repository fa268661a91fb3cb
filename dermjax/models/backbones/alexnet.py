"""AlexNet, torchvision layout (the one-tower variant of Krizhevsky et al. 2014), NHWC.

Parameters `conv1`..`conv5` (torchvision `features.0/3/6/8/10`) and, with `num_classes`,
`head/fc6`, `head/fc7`, `head/fc8` (`classifier.1/4/6`), so a torchvision checkpoint maps
on by a fixed table (`dermjax.weight_keys`). No batch norm.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from dermjax.models.backbones.vgg import VGGClassifierHead

# (output channels, kernel, stride, padding, 3x3/2 max pool after the ReLU) per conv.
ALEXNET_CONVS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                 (256, 3, 1, 1, False), (256, 3, 1, 1, True))


class AlexNet(nn.Module):
  """Input [B, H, W, 3] (ImageNet-normalised); returns a dict of taps:

    conv{k}   [B, h, w, C_k] after conv k's ReLU (k = 1..5)
    pool1, pool2, pool5   after the 3x3 stride-2 max pools (pool5: the last feature map)
    pre_logits [B, 4096], logits [B, num_classes]   torchvision's classifier (with num_classes;
              adaptive average pool to 6x6, dropout before fc6 and fc7)
  At 224 px: conv1 [B, 55, 55, 64], pool2 [B, 13, 13, 192], pool5 [B, 6, 6, 256].
  """

  num_classes: Optional[int] = None
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    taps = {}
    for k, (features, kernel, stride, padding, pool) in enumerate(ALEXNET_CONVS, start=1):
      x = nn.Conv(features, (kernel, kernel), stride, padding=padding, dtype=self.dtype,
                  name=f"conv{k}")(x)
      taps[f"conv{k}"] = x = nn.relu(x)
      if pool:
        taps[f"pool{k}"] = x = nn.max_pool(x, (3, 3), strides=(2, 2))
    if self.num_classes is not None:
      taps.update(VGGClassifierHead(self.num_classes, dropout_rate=self.dropout_rate, pool_size=6,
                                    dropout_first=True, dtype=self.dtype, name="head")(
                                        x, train=train))
    return taps
