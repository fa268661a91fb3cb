"""AttnMel-CNN (Yan, Kawahara, Hamarneh 2019) and its Mel-CNN ablation.

VGG-16(-BN) without dense layers; attention modules on pool-3 and pool-4 with pool-5 as
global guidance G (eq. 1-3):

  R = W * ReLU(W_f * F + up(W_g * G)),   A = sigmoid(R)  (or a spatial softmax),
  f_hat_i = a_i f_i,

then the classifier reads [GAP(G), GAP(F3_hat), GAP(F4_hat)] (with the softmax option the
attended features are summed, not averaged, as in the authors' code). `model.attention =
False` is Mel-CNN: [GAP(G), GAP(F3), GAP(F4)] without attention.

Regularised variants (eq. 4-5), `loss.attention_reference`: "lesion" (AttnMel-CNN-Lesion),
"dermo" (union of the four ISIC 2017 dermoscopic attribute masks, -Dermo), "background"
(inverse lesion mask, -Bkg) or None: L = focal + lambda3 Dice(A3, ref3) + lambda4 Dice(A4,
ref4), the Dice taken over the whole batch as one tensor and the reference area-downsampled
to each map's size. Examples without a ground-truth reference mask are left out of it.

Config fields (see configs/attnmel.py): model.{attention, normalize_attention,
attention_features, batch_norm, num_classes, dtype}, loss.{focal_gamma,
attention_reference, attention_weights}.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dermjax import losses
from dermjax.data import schema
from dermjax.metrics import attention as attention_metrics
from dermjax.models.backbones.vgg import VGGStages
from dermjax.models.common import compute_dtype, explain as common_explain

# AttnMel-CNN-Dermo's reference: the ISIC 2017 Task 2 attributes (paper Sec. 3.2, footnote 2).
DERMO_ATTRIBUTES = ("pigment_network", "negative_network", "milia_like_cyst", "streaks")
REFERENCES = (None, "lesion", "dermo", "background")
# Attention maps in output order, with the VGG tap each one weights.
ATTENDED = (("pool3", "attention3"), ("pool4", "attention4"))

# He (fan-in, ReLU) initialisation for the attention convolutions, as the paper; torch's
# kaiming_normal_ is an untruncated normal.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class AttentionBlock(nn.Module):
  """Eq. 1-3. local F [B, h, w, C], guide G [B, h', w', C'] -> (A [B, h, w], pooled [B, C]).

  W_f, W_g: 1x1 convolutions without bias to `features` channels; W: 1x1 to one channel
  with bias. up(): bilinear resize of W_g * G to F's grid. `normalize`: A is a softmax over
  the h*w positions and pooled = sum_i a_i f_i; otherwise A = sigmoid(R), pooled = mean.
  """

  features: int = 256
  normalize: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, local, guide):
    conv = lambda n, bias, name: nn.Conv(n, (1, 1), use_bias=bias, kernel_init=he_normal,
                                         dtype=self.dtype, name=name)
    wf = conv(self.features, False, "W_f")(local)
    wg = conv(self.features, False, "W_g")(guide)
    wg = jax.image.resize(wg, wf.shape, method="bilinear")
    response = conv(1, True, "W")(nn.relu(wf + wg))[..., 0].astype(jnp.float32)  # [B, h, w]
    batch, h, w = response.shape
    if self.normalize:
      att = jax.nn.softmax(response.reshape(batch, h * w), axis=-1).reshape(batch, h, w)
      pooled = jnp.einsum("bhw,bhwc->bc", att, local.astype(jnp.float32))
    else:
      att = jax.nn.sigmoid(response)
      pooled = jnp.mean(att[..., None] * local.astype(jnp.float32), axis=(1, 2))
    return att, pooled


class AttnMel(nn.Module):
  """Image [B, H, W, 3] -> {"logits": [B, K], "attention3": [B, H/8, W/8],
  "attention4": [B, H/16, W/16]} (the attention maps only with `attention`)."""

  num_classes: int = 2
  attention: bool = True
  normalize_attention: bool = False
  attention_features: int = 256
  batch_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    taps = VGGStages(batch_norm=self.batch_norm, dtype=self.dtype, name="backbone")(
        batch["image"].astype(self.dtype), train=train)
    guide = taps["pool5"]
    features = [jnp.mean(guide.astype(jnp.float32), axis=(1, 2))]
    outputs = {}
    for tap, name in ATTENDED:
      if self.attention:
        att, pooled = AttentionBlock(self.attention_features, self.normalize_attention, self.dtype,
                                     name=f"attention{tap[-1]}")(taps[tap], guide)
        outputs[name] = att
      else:
        pooled = jnp.mean(taps[tap].astype(jnp.float32), axis=(1, 2))
      features.append(pooled)
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                      name="classifier")(jnp.concatenate(features, axis=-1))
    outputs["logits"] = logits.astype(jnp.float32)
    return outputs


def build(config) -> nn.Module:
  m = config.model
  reference = config.loss.get("attention_reference", None)
  if reference not in REFERENCES:
    raise ValueError(f"config.loss.attention_reference must be one of {REFERENCES}, got {reference!r}")
  if reference is not None and not m.attention:
    raise ValueError("config.loss.attention_reference needs attention maps; "
                     "config.model.attention is False (Mel-CNN)")
  return AttnMel(num_classes=m.num_classes, attention=m.attention,
                 normalize_attention=m.normalize_attention,
                 attention_features=m.attention_features, batch_norm=m.batch_norm,
                 dtype=compute_dtype(config))


def area_downsample(maps, size):
  """Average-pool [B, H, W] to [B, h, w] (torch adaptive_avg_pool2d when h | H and w | W)."""
  batch, height, width = maps.shape
  h, w = size
  if height % h == 0 and width % w == 0:
    return maps.reshape(batch, h, height // h, w, width // w).mean(axis=(2, 4))
  return jax.image.resize(maps, (batch, h, w), method="linear", antialias=True)


def reference_map(batch, reference):
  """The regulariser's reference [B, H, W] and which examples have it as ground truth [B].

  batch: masks [B, H, W, 1 + A] (channel 0 lesion, then schema.ATTRIBUTES),
  has_lesion_mask [B], has_attributes [B].
  """
  lesion = batch["masks"][..., 0]
  if reference == "lesion":
    return lesion, batch["has_lesion_mask"]
  if reference == "background":
    return 1.0 - lesion, batch["has_lesion_mask"]
  if reference == "dermo":
    channels = [1 + schema.ATTRIBUTES.index(a) for a in DERMO_ATTRIBUTES]
    return jnp.max(batch["masks"][..., channels], axis=-1), batch["has_attributes"]
  raise ValueError(f"Unknown attention reference {reference!r}; expected one of {REFERENCES[1:]}")


def loss(outputs, batch, config, stats):
  """Eq. 5: focal loss on batch["label"] + weighted batch-Dice of A3, A4 against the reference."""
  del stats
  valid = batch["valid"].astype(jnp.float32)
  focal = losses.focal_loss(outputs["logits"], batch["label"], gamma=config.loss.focal_gamma,
                            weights=valid)
  metrics = {"focal": focal}
  total = focal
  reference = config.loss.get("attention_reference", None)
  if reference is not None:
    ref, has_ref = reference_map(batch, reference)
    keep = (valid * has_ref.astype(jnp.float32))[:, None, None]
    for (_, name), weight in zip(ATTENDED, config.loss.attention_weights):
      att = outputs[name]
      target = area_downsample(ref, att.shape[1:])
      dice = losses.dice_loss(att * keep, target * keep)
      metrics[f"dice_{name}"] = dice
      total = total + weight * dice
  metrics["loss"] = total
  return total, metrics


def eval_arrays(outputs, batch, config):
  """Per-example Table 3 arrays (Jaccard of each binarised attention map with the lesion)."""
  del config
  maps = {tap: outputs[name] for tap, name in ATTENDED if name in outputs}
  if not maps:
    return {}
  return attention_metrics.map_jaccard_arrays(maps, batch["masks"][..., 0], batch["has_lesion_mask"])


def report(arrays, config):
  """The Jaccard table: mean (and pooled) Jaccard per attention map."""
  del config
  return attention_metrics.jaccard_report(arrays)


def saliency(outputs, batch, config):
  """The contract's saliency hook: the attention maps {"attention3", "attention4"} [B, h, w]
  (none for Mel-CNN)."""
  del batch, config
  return {name: outputs[name] for _, name in ATTENDED if name in outputs}


def explain(outputs, batch, images, ids, config, out_dir):
  """Attention maps A3, A4 upsampled onto the image (paper Fig. 3), next to the lesion mask
  (both cropped as the model saw them, common.explain.model_view)."""
  maps = {tap: np.asarray(outputs[name]) for tap, name in ATTENDED if name in outputs}
  if not maps:
    return
  images, batch = common_explain.model_view(images, batch, config)
  common_explain.save_overlays(maps, images, ids, out_dir,
                               common_explain.lesion_masks(batch, len(ids)))
