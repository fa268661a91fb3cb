"""Gaze sequences for explainable skin-lesion diagnosis (Esteve-Cogollos 2020, Secs. 3-4).

VGG-16 blocks 1-3 (the encoder) -> Attentive ConvLSTM run for T steps (the gazes A_t) ->
  * decoder on every hidden state H_t: one structure mask and structure class per step;
  * diagnosis branch: VGG-16 blocks 4-5 on the last attended features X~_{T-1}
    (diagnosis_input "attended"; "encoder": on X' itself, Deco_GAP_17), GAP, concatenated
    with GAP(X~_t) for every t (step_dim > 0: reduced by a dense layer), then the classifier.

Submodules (and optimiser-group names): encoder, attentive_convlstm, decoder,
structure_head, diagnosis_vgg, diagnosis_head. Outputs of `GazeNet.__call__`:
  logits            [B, K]        diagnosis logits
  attention         [B, T, h, w]  A_t (softmax over the h x w = H/8 x W/8 positions)
  masks             [B, T, H, W]  per-step structure mask probabilities (decoder only)
  mask_logits       [B, T, H, W]
  structure_logits  [B, T, S]     per-step structure classes (decoder only)
The structure loss matches the S ground-truth structures to the T predicted masks one to
one (Hungarian, dermjax.models.gaze.matchers) on 1 - softIoU, over the structures present only.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dermjax import conv as conv_lib
from dermjax.data import schema
from dermjax.models.backbones.layers import batch_norm
from dermjax.models.backbones.vgg import VGGStages, adaptive_avg_pool

# Decoder blocks: output channels of each 3x3 conv (mirror of VGG-16 blocks 3, 2, 1).
DECODER_BLOCKS = ((256, 256, 128), (128, 64), (64, 1))
HEADS = ("gap", "fc")
# "reflect_explicit": flax's padding="REFLECT" (jnp.pad + VALID conv), same values as
# "reflect"; kept to benchmark the two forms (BENCHMARKS.md).
PADDINGS = ("zeros", "reflect", "reflect_explicit")
POOLS = ("mean", "max")
ACTIVATIONS = ("relu", "none")
DIAGNOSIS_INPUTS = ("attended", "encoder")


def _conv_padding(padding: str):
  if padding not in PADDINGS:
    raise ValueError(f"config.model.padding must be one of {PADDINGS}, got {padding!r}")
  return padding


def conv3x3(features, padding: str, dtype, **kwargs):
  """A 3x3 "same" nn.Conv with zero or reflect padding ("zeros" | "reflect").

  Reflect padding equals flax's padding="REFLECT" (jnp.pad + VALID convolution) but runs as
  the zero-padded convolution plus border corrections (dermjax.conv.reflect_conv, ~2x faster
  on XLA:CPU); both use canonical gradient convolutions (fast inside nn.scan as well).
  Parameters are those of nn.Conv(features, (3, 3)).
  """
  if _conv_padding(padding) == "reflect_explicit":
    return nn.Conv(features, (3, 3), padding="REFLECT", dtype=dtype,
                   conv_general_dilated=conv_lib.conv_general_dilated, **kwargs)
  fn = (conv_lib.reflect_conv_general_dilated if padding == "reflect"
        else conv_lib.conv_general_dilated)
  return nn.Conv(features, (3, 3), padding=1, dtype=dtype, conv_general_dilated=fn, **kwargs)


def upsample2(x):
  """Nearest-neighbour x2 upsampling (torch nn.Upsample default): [N, h, w, C] -> [N, 2h, 2w, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class AttentiveConvLSTMCell(nn.Module):
  """One step (eqs. 1-9). carry (C, H) [B, h, w, F]; wx = W_a * X' + b_a; x = X' [B, h, w, F].

  Returns the new carry and (H_t, A_t [B, h, w], GAP(X~_t) [B, F]).
  """

  features: int
  padding: str = "zeros"
  rescale_attention: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, wx, x):
    c, h = carry
    # conv_lib: canonical gradient convolutions; XLA:CPU runs those of a scan body ~15x slower.
    conv = functools.partial(conv3x3, padding=self.padding, dtype=self.dtype)
    orthogonal = nn.initializers.orthogonal()
    ua = conv(self.features, use_bias=False, kernel_init=orthogonal, name="U_a")(h)
    z = conv(1, use_bias=False, kernel_init=nn.initializers.zeros, name="V_a")(jnp.tanh(wx + ua))
    batch, height, width = z.shape[:3]
    a = jax.nn.softmax(z.astype(jnp.float32).reshape(batch, height * width), axis=-1)
    a = a.reshape(batch, height, width, 1)
    scale = height * width if self.rescale_attention else 1.0
    x_t = (a * scale).astype(x.dtype) * x  # eq. 3
    gates = (conv(4 * self.features, name="W")(x_t)
             + conv(4 * self.features, use_bias=False, kernel_init=orthogonal, name="U")(h))
    i, f, o, g = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)  # eqs. 4, 5, 7, 8
    h = (jax.nn.sigmoid(o) * jnp.tanh(c)).astype(self.dtype)   # eqs. 6, 9
    return (c, h), (h, a[..., 0], jnp.mean(x_t.astype(jnp.float32), axis=(1, 2)))


class AttentiveConvLSTM(nn.Module):
  """X' [B, h, w, F] -> H [T, B, h, w, F], A [T, B, h, w], GAP(X~_t) [T, B, F].

  W_a * X' does not depend on t and is computed once; the T steps are one `nn.scan`, so
  the compiled program does not grow with T. Zero initial state. remat: the backward pass
  recomputes each step from its carry (per-step residuals no longer grow the memory with T).
  """

  timesteps: int
  padding: str = "zeros"
  rescale_attention: bool = False
  dtype: Any = jnp.float32
  remat: bool = False  # Keep only the carries per step; recompute a step in the backward pass.

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    wx = conv3x3(features, self.padding, self.dtype, name="W_a")(x)
    cell_class = nn.remat(AttentiveConvLSTMCell) if self.remat else AttentiveConvLSTMCell
    scan = nn.scan(cell_class, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=(nn.broadcast, nn.broadcast), length=self.timesteps)
    cell = scan(features, self.padding, self.rescale_attention, self.dtype, name="cell")
    carry = (jnp.zeros(x.shape, jnp.float32), jnp.zeros(x.shape, self.dtype))
    _, (hs, attention, gaps) = cell(carry, wx, x)
    return hs, attention, gaps


class Decoder(nn.Module):
  """Hidden states [N, h, w, 256] (+ skips pool3, pool2, pool1, each [N', ...] with N = N' * r)
  -> mask logits [N, 8h, 8w] and the concatenated per-block global pools [N, 448].

  Each block: average with the skip (if `skips`), global pool (`pool` "mean" = GAP, the
  thesis text; "max", its code's AdaptiveMaxPool2d), x2 upsample, 3x3 convs with ReLU
  (+ BN), the last conv of the last block giving the one-channel mask logits.
  """

  skips: bool = True
  batch_norm: bool = True
  padding: str = "zeros"
  pool: str = "mean"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skip_maps, *, train: bool = False):
    pools = []
    for b, (features, skip) in enumerate(zip(DECODER_BLOCKS, skip_maps), start=1):
      if self.skips:
        if skip.shape[1:] != x.shape[1:]:
          raise ValueError(f"gaze decoder block {b}: skip {skip.shape} does not match {x.shape}")
        r = x.shape[0] // skip.shape[0]  # Skips broadcast over the T steps folded into N.
        x = ((x.reshape((skip.shape[0], r) + x.shape[1:]) + skip[:, None].astype(x.dtype)) / 2
             ).reshape(x.shape)
      reduce = jnp.max if self.pool == "max" else jnp.mean
      pools.append(reduce(x.astype(jnp.float32), axis=(1, 2)))
      x = upsample2(x)
      for k, f in enumerate(features, start=1):
        x = conv3x3(f, self.padding, self.dtype, name=f"block{b}_conv{k}")(x)
        if b == len(DECODER_BLOCKS) and k == len(features):
          break  # Mask logits.
        if self.batch_norm:
          x = batch_norm(train, False, self.dtype, f"block{b}_bn{k}")(x)
        x = nn.relu(x)
    return x[..., 0].astype(jnp.float32), jnp.concatenate(pools, axis=-1)


class StructureHead(nn.Module):
  """Pooled decoder features [N, 448] -> structure logits [N, S]: dense 224, then
  `hidden_activation` ("none": the thesis code's two stacked linear layers; "relu"), dense S."""

  num_structures: int
  hidden_activation: str = "none"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(x.shape[-1] // 2, dtype=self.dtype, name="dense1")(x)
    if self.hidden_activation == "relu":
      x = nn.relu(x)
    return nn.Dense(self.num_structures, dtype=self.dtype, name="dense2")(x).astype(jnp.float32)


class DiagnosisHead(nn.Module):
  """pool5 [B, h5, w5, 512] + per-step GAP(X~_t) [B, T, F] -> logits [B, K].

  head "gap": concat(GAP(pool5), GAP(X~_0), ..., GAP(X~_{T-1})) -> dense K (the thesis's
  classifier). head "fc": torchvision's classifier (7x7 adaptive pool, fc6, fc7, fc8) on
  concat(flattened pool5, step GAPs). step_dim > 0: the step GAPs first go through a dense
  layer of that width (the thesis's `_17` model).
  """

  num_classes: int
  head: str = "gap"
  step_dim: int = 0
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pool5, step_gaps, *, train: bool = False):
    steps = step_gaps.reshape(step_gaps.shape[0], -1).astype(self.dtype)
    if self.step_dim:
      steps = nn.Dense(self.step_dim, dtype=self.dtype, name="step_reduce")(steps)
    if self.head == "gap":
      x = jnp.concatenate([jnp.mean(pool5, axis=(1, 2)), steps], axis=-1)
      return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                      name="fc")(x)
    if self.head == "fc":
      x = jnp.concatenate([adaptive_avg_pool(pool5, 7).reshape(pool5.shape[0], -1), steps], axis=-1)
      for name in ("fc6", "fc7"):
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name=name)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      return nn.Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
    raise ValueError(f"config.model.head must be one of {HEADS}, got {self.head!r}")


def _decode_in_chunks(decoder, hs, skip_maps, chunk: int, train: bool, remat: bool = True):
  """The decoder over hidden states hs [T, B, h, w, F], `chunk` steps (B * chunk maps) per
  pass, the passes one nn.scan, rematerialised (remat): the backward pass keeps only each
  chunk's input and recomputes its activations, so peak memory is one chunk's, whatever T
  (remat False: keeps every chunk's activations, no recomputation).
  Returns mask logits [B * T, H, W] and pools [B * T, 448] in the batched decoder's order.
  Decoder BN in training mode normalises with each chunk's statistics (chunk = 1: per step
  over the B images, as the thesis code's per-step decoder) and updates its running averages
  once per chunk, in step order.
  """
  t, b = hs.shape[:2]
  if t % chunk:
    raise ValueError(f"config.model.decoder_chunk = {chunk} must divide timesteps = {t}")

  def body(module, carry, h_chunk, skips):  # h_chunk [chunk, B, h, w, F]
    folded = jnp.moveaxis(h_chunk, 0, 1).reshape((b * chunk,) + h_chunk.shape[2:])
    logits, pools = module(folded, skips, train=train)
    return carry, (logits.reshape((b, chunk) + logits.shape[1:]), pools.reshape(b, chunk, -1))

  scan = nn.scan(nn.remat(body) if remat else body, variable_broadcast="params",
                 variable_carry="batch_stats", split_rngs={"params": False},
                 in_axes=(0, nn.broadcast), length=t // chunk)
  _, (logits, pools) = scan(decoder, None, hs.reshape((t // chunk, chunk) + hs.shape[1:]),
                            skip_maps)
  fold = lambda v: jnp.moveaxis(v, 0, 1).reshape((b * t,) + v.shape[3:])  # [n, B, c, ...]
  return fold(logits), fold(pools)


class GazeNet(nn.Module):
  """The whole gaze model; see the module docstring for the outputs.

  decoder_chunk > 0 (memory mode, training only): the ConvLSTM steps are rematerialised and
  the decoder runs over `decoder_chunk` steps at a time in a rematerialised scan
  (`_decode_in_chunks`), so the train step's peak memory no longer grows with T. Same loss
  and gradients as the default (0: one decoder pass over all B x T maps) except that decoder
  BN in training mode uses per-chunk statistics. Init and eval use the batched decoder.
  remat False (config.model.memory_remat): the same chunked computation without the
  recomputation (memory then grows with T again; a speed switch, BENCHMARKS.md).
  """

  num_classes: int = 1
  num_structures: int = schema.NUM_STRUCTURES
  timesteps: int = 5
  decoder: bool = True
  skips: bool = True
  batch_norm: bool = True
  frozen_bn: bool = False
  freeze_encoder: bool = False
  head: str = "gap"
  step_dim: int = 0
  structure_pool: str = "mean"
  structure_hidden_activation: str = "none"
  diagnosis_input: str = "attended"
  padding: str = "zeros"
  rescale_attention: bool = False
  dropout_rate: float = 0.5
  decoder_chunk: int = 0
  remat: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    image = batch["image"]
    if image.shape[1] % 8 or image.shape[2] % 8:
      raise ValueError(f"gaze model: image size {image.shape[1:3]} must be divisible by 8")
    padding = _conv_padding(self.padding)
    # The encoder's BN follows frozen_bn alone: frozen weights (freeze_encoder, rate 0) may
    # still normalise with batch statistics in training (the thesis's settings 1 and 4).
    taps = VGGStages(blocks=(1, 2, 3), batch_norm=self.batch_norm, frozen_bn=self.frozen_bn,
                     dtype=self.dtype, name="encoder")(image.astype(self.dtype), train=train)
    skip_maps = [taps["pool3"], taps["pool2"], taps["pool1"]]
    if self.freeze_encoder:
      skip_maps = [jax.lax.stop_gradient(s) for s in skip_maps]
    x = skip_maps[0]  # X' [B, h, w, 256]
    batch_size, t = x.shape[0], self.timesteps

    memory_mode = self.decoder_chunk > 0 and train and not self.is_initializing()
    hs, attention, gaps = AttentiveConvLSTM(t, padding, self.rescale_attention, self.dtype,
                                            remat=memory_mode and self.remat,
                                            name="attentive_convlstm")(x)
    attention = jnp.moveaxis(attention, 0, 1)  # [B, T, h, w]
    out = {"attention": attention}

    if self.decoder:
      decoder = Decoder(self.skips, self.batch_norm, padding, self.structure_pool, self.dtype,
                        name="decoder")
      if memory_mode:
        mask_logits, pools = _decode_in_chunks(decoder, hs, skip_maps, self.decoder_chunk, train,
                                               self.remat)
      else:
        folded = jnp.moveaxis(hs, 0, 1).reshape((batch_size * t,) + hs.shape[2:])  # [B*T, ...]
        mask_logits, pools = decoder(folded, skip_maps, train=train)
      mask_logits = mask_logits.reshape((batch_size, t) + mask_logits.shape[1:])
      out["mask_logits"] = mask_logits
      out["masks"] = jax.nn.sigmoid(mask_logits)
      out["structure_logits"] = StructureHead(
          self.num_structures, self.structure_hidden_activation, self.dtype,
          name="structure_head")(pools).reshape(batch_size, t, self.num_structures)

    if self.diagnosis_input == "encoder":
      x_last = x  # X' itself (the thesis's "X' GAP version", Deco_GAP_17).
    else:
      scale = x.shape[1] * x.shape[2] if self.rescale_attention else 1.0
      x_last = (attention[:, -1, :, :, None] * scale).astype(x.dtype) * x  # X~_{T-1}
    pool5 = VGGStages(blocks=(4, 5), batch_norm=self.batch_norm, frozen_bn=self.frozen_bn,
                      dtype=self.dtype, name="diagnosis_vgg")(x_last, train=train)["pool5"]
    logits = DiagnosisHead(self.num_classes, self.head, self.step_dim, self.dropout_rate, self.dtype,
                           name="diagnosis_head")(pool5, jnp.moveaxis(gaps, 0, 1), train=train)
    out["logits"] = logits.astype(jnp.float32)
    return out


def _decoder_chunk(m) -> int:
  """config.model.decoder_chunk (absent: 0, the batched decoder); must divide T."""
  chunk = int(m.get("decoder_chunk", 0) or 0)
  if chunk < 0 or (chunk and int(m.timesteps) % chunk):
    raise ValueError(f"config.model.decoder_chunk must be 0 or divide timesteps = {m.timesteps}, "
                     f"got {chunk}")
  return chunk


def build(config) -> GazeNet:
  """GazeNet from config.model (see configs/gaze.py for the fields)."""
  m = config.model
  if m.head not in HEADS:
    raise ValueError(f"config.model.head must be one of {HEADS}, got {m.head!r}")
  if int(m.timesteps) < 1:
    raise ValueError(f"config.model.timesteps must be >= 1, got {m.timesteps}")
  _conv_padding(m.padding)
  choices = {"structure_pool": POOLS, "structure_hidden_activation": ACTIVATIONS,
             "diagnosis_input": DIAGNOSIS_INPUTS}
  defaults = {"structure_pool": "mean", "structure_hidden_activation": "none",
              "diagnosis_input": "attended"}
  chosen = {k: m.get(k, defaults[k]) for k in choices}
  for k, allowed in choices.items():
    if chosen[k] not in allowed:
      raise ValueError(f"config.model.{k} must be one of {allowed}, got {chosen[k]!r}")
  return GazeNet(
      num_classes=int(m.num_classes), num_structures=schema.NUM_STRUCTURES,
      timesteps=int(m.timesteps), decoder=bool(m.decoder), skips=bool(m.skips),
      batch_norm=bool(m.batch_norm), frozen_bn=bool(m.frozen_bn),
      freeze_encoder=bool(m.freeze_encoder), head=m.head, step_dim=int(m.step_dim),
      padding=m.padding, rescale_attention=bool(m.rescale_attention),
      decoder_chunk=_decoder_chunk(m), remat=bool(m.get("memory_remat", True)),
      dropout_rate=float(m.dropout_rate), dtype=jnp.dtype(m.dtype), **chosen)
