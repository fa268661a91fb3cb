"""CIN stage 2 (Secs. 2, 3.2): crop by the frozen stage 1, ResNet-18, attention, distinguish.

  x = crop_and_resize(image, stage-1 box, S)            (A; else x = image)
  branch(x): F = ResNet-18 layer4 -> F_A (eq. 3; F) -> GAP -> FC -> ReLU -> FC -> class logits
  D: pairs (i, perm[i]) from the batch, perm a derangement (no image paired with itself,
     which would be a trivially "same class" pair): uniformly random, drawn on device with
     make_rng("sample"), in training; the fixed shift perm[i] = i + 1 mod B at evaluation, so
     the evaluation's distinguish loss is computed on real pairs, deterministically.
     branch_a reads x, branch_b reads x (its outputs gathered at perm: branch b of image
     perm[i], as if it read x[perm], since both branches are per-example functions of the
     batch, BN statistics included); distinguish(F_A^a, F_A^b[perm]) -> "same class" logit
     (Fig. 4).

The two branches have their own weights (`share_branches = False`, as the synergic network
[22] CIN builds on; True: one Siamese network). At test time each image goes through both
branches and their class probabilities are summed (Sec. 3.2). The heads are softmax
classifiers over K = max(num_classes, 2) classes (eq. 4's weighted CE); outputs["logits"]
follows the model contract: for num_classes = 1 (binary targets, the paper's tasks) the one
logit log(p_1 / p_0) of the mean (p_a + p_b) / 2, so the trainer's sigmoid reads exactly that
mean probability of class 1 (binary AUC / AP / ACC / SE / SP); for num_classes = K > 1 the
log of the mean probabilities [B, K]. Without D there is one branch. In training
outputs["logits"] is branch a's (on the unpaired images). With F, outputs["alpha"] and
["beta"] (branch a; "alpha_b", "beta_b" for branch b) are eq. 3's scalars broadcast to [B]
(outputs stay per-example), which the loss logs so a user sees whether module F is used.

Stage 1 (`lesion_attention`, dermjax.models.cin.lesion.LesionAttention) always runs with
train=False (running BN statistics) behind a stop_gradient; its parameters come from the
stage-1 workdir (config.model.pretrained) and an optimiser group of rate 0 freezes them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dermjax.models.backbones import build_backbone
from dermjax.models.cin.attention import LesionFeatureAttention
from dermjax.models.cin import lesion
from dermjax.models.cin.lesion import LesionAttention
from dermjax.models.common import compute_dtype, crop


class Branch(nn.Module):
  """x [B, S, S, 3] -> {"features": F_A [B, h, w, C], "class_logits": [B, K], "q": [B, h, w]?}."""

  num_classes: int = 2
  arch: str = "resnet18"
  attention: bool = True
  hidden: int = 256
  reduction: int = 8
  correlation_norm: str = "global"
  correlation: bool = True
  blocks_per_stage: int = 0     # > 0 / width > 0: the CPU-sized ResNet (backbones.build_backbone).
  width: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    f = build_backbone(self.arch, blocks_per_stage=self.blocks_per_stage, width=self.width,
                       dtype=self.dtype, name="backbone")(x, train=train)["layer4"]
    out = {}
    if self.attention:
      f, maps = LesionFeatureAttention(correlation=self.correlation, reduction=self.reduction,
                                       correlation_norm=self.correlation_norm, dtype=self.dtype,
                                       name="attention")(f)
      out["q"] = maps["q"]
    h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(jnp.mean(f, axis=(1, 2))))
    out["class_logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(h).astype(jnp.float32)
    if self.attention:
      out.update({k: jnp.broadcast_to(maps[k], x.shape[:1]) for k in ("alpha", "beta")})
    out["features"] = f
    return out


class Distinguish(nn.Module):
  """(F_A^a, F_A^b) [B, h, w, C] each -> "same class" logit [B] (Fig. 4): concatenate ->
  analyse block (1x1 conv, two 3x3 convs, ReLU after each) -> GAP -> distinguish block
  (FC, ReLU, dropout, FC)."""

  features: int = 256
  hidden: int = 256
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, fa, fb, *, train: bool):
    x = jnp.concatenate([fa, fb], axis=-1).astype(self.dtype)
    for i, k in enumerate((1, 3, 3)):
      x = nn.relu(nn.Conv(self.features, (k, k), padding=k // 2, dtype=self.dtype, name=f"analyse{i}")(x))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(jnp.mean(x, axis=(1, 2))))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(1, dtype=self.dtype, name="fc2")(x)[:, 0].astype(jnp.float32)


def pair_permutation(rng, batch_size: int):
  """A uniformly random derangement [B] int32 of the batch (the partner of image i is perm[i]
  != i), by rejection: permutations are drawn until one has no fixed point (e ~ 2.7 draws
  on average). B = 1 has none: the identity."""
  if batch_size < 2:
    return jnp.zeros((batch_size,), jnp.int32)
  index = jnp.arange(batch_size, dtype=jnp.int32)

  def draw(carry):
    key, _ = carry
    key, sub = jax.random.split(key)
    return key, jax.random.permutation(sub, batch_size).astype(jnp.int32)

  _, perm = jax.lax.while_loop(lambda carry: jnp.any(carry[1] == index), draw,
                               draw((rng, index)))
  return perm


def shifted_pairs(batch_size: int):
  """The evaluation's fixed derangement: perm[i] = i + 1 mod B ([B] int32; B = 1: identity)."""
  return jnp.roll(jnp.arange(batch_size, dtype=jnp.int32), -1)


def same_class(label, perm):
  """Pair labels eq. 5: [B] float32, 1 where image i and its partner perm[i] share the label."""
  return (label == label[perm]).astype(jnp.float32)


def head_classes(num_classes: int) -> int:
  """Softmax classes of the heads: 2 for a one-score (sigmoid) model, else num_classes."""
  return max(int(num_classes), 2)


def summed_logits(logits_a, logits_b, num_classes: int = 1):
  """Test-time fusion: branch logits [B, K] -> log (softmax a + softmax b) / 2 [B, K], or for
  num_classes = 1 (K = 2) the logit [B, 1] log(p_1 / p_0) of that mean (its sigmoid = the
  mean probability of class 1)."""
  p = (jax.nn.softmax(logits_a, axis=-1) + jax.nn.softmax(logits_b, axis=-1)) / 2
  return contract_logits(jnp.log(jnp.maximum(p, 1e-30)), num_classes)


def contract_logits(logits, num_classes: int):
  """Head logits (or log-probabilities) [B, K] -> outputs["logits"]: [B, 1] = logit of class 1
  (log p_1 - log p_0) for num_classes = 1, else unchanged."""
  if num_classes == 1:
    return logits[:, 1:] - logits[:, :1]
  return logits


class CIN(nn.Module):
  """batch {"image" [B, S, S, 3], ...} -> outputs (see the module docstring): head logits
  class_logits_a [B, K], logits [B, num_classes]; with A lesion_map [B, S, S], crop_box
  [B, 4]; with F q [B, h, w] (branch a); with D class_logits_b [B, K], pair_perm [B],
  pair_logit [B]. share_branches=True has no branch_b (drop it from pretrained_targets)."""

  num_classes: int = 1          # the contract's: 1 = one sigmoid score (2-way softmax heads).
  lesion: bool = True
  attention: bool = True
  distinguish: bool = True
  share_branches: bool = False
  arch: str = "resnet18"
  hidden: int = 256
  reduction: int = 8
  correlation_norm: str = "global"
  correlation: bool = True      # False: F without its correlation block (benchmarks).
  distinguish_features: int = 256
  distinguish_hidden: int = 256
  dropout: float = 0.5
  lesion_kwargs: Any = None     # LesionAttention fields (dermjax.models.cin.lesion.module_kwargs).
  blocks_per_stage: int = 0     # the branches' CPU-sized ResNet (Branch).
  backbone_width: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    image = batch["image"]
    out = {}
    if self.lesion:
      stage1 = LesionAttention(**(self.lesion_kwargs or {}), name="lesion_attention")
      found = jax.lax.stop_gradient(stage1({"image": image}, train=False))
      out["lesion_map"], out["crop_box"] = found["lesion_map"], found["box"]
      image = crop.crop_and_resize(image, found["box"], image.shape[1])
    branch = lambda name: Branch(head_classes(self.num_classes), self.arch, self.attention, self.hidden,
                                 self.reduction, self.correlation_norm, self.correlation,
                                 self.blocks_per_stage, self.backbone_width, self.dtype, name=name)
    branch_a = branch("branch_a")
    a = branch_a(image, train=train)
    out["class_logits_a"] = a["class_logits"]
    out.update({k: a[k] for k in ("q", "alpha", "beta") if k in a})
    if not self.distinguish:
      out["logits"] = contract_logits(a["class_logits"], self.num_classes)
      return out
    size = image.shape[0]
    perm = (pair_permutation(self.make_rng("sample"), size) if train else shifted_pairs(size))
    branch_b = branch_a if self.share_branches else branch("branch_b")
    b = branch_b(image, train=train)
    out["class_logits_b"], out["pair_perm"] = b["class_logits"][perm], perm
    out.update({f"{k}_b": b[k] for k in ("alpha", "beta") if k in b and not self.share_branches})
    out["pair_logit"] = Distinguish(self.distinguish_features, self.distinguish_hidden, self.dropout,
                                    self.dtype, name="distinguish")(a["features"], b["features"][perm],
                                                                    train=train)
    # Test time (Sec. 3.2): each image through both branches, their probabilities summed.
    out["logits"] = (contract_logits(a["class_logits"], self.num_classes) if train
                     else summed_logits(a["class_logits"], b["class_logits"], self.num_classes))
    return out


def build(config):
  """config.model (configs/cin.py) -> CIN."""
  m = config.model
  return CIN(num_classes=m.num_classes, lesion=m.use_lesion, attention=m.use_attention,
             distinguish=m.use_distinguish, share_branches=m.share_branches, arch=m.arch,
             hidden=m.hidden, reduction=m.reduction, correlation_norm=m.correlation_norm,
             correlation=m.use_correlation,
             distinguish_features=m.distinguish_features, distinguish_hidden=m.distinguish_hidden,
             dropout=m.dropout, lesion_kwargs=lesion.module_kwargs(config) if m.use_lesion else None,
             blocks_per_stage=m.get("blocks_per_stage", 0), backbone_width=m.get("backbone_width", 0),
             dtype=compute_dtype(config))
