"""CIN's lesion feature attention module (Sec. 2, Fig. 3, eqs. 1-3).

Input F [B, H, W, C] (ResNet-18 layer4). M = H W positions.

  spatial block:      F^ = ReLU(conv3x3(ReLU(conv3x3(conv1x1(F)))))  [B, H, W, 1]
                      Q = F^ / sum over all H x W positions of F^      (eq. 1)
  correlation block:  F' = conv3x3(conv1x1(F)), F'' likewise (two branches), [B, M, C / r]
                      F~ = F' F''^T                                    [B, M, M]
                      P = exp(F~) / sum over all M x M entries of exp(F~)  (eq. 2)
                      P * F                                            [B, M, C] -> [B, H, W, C]
  output:             F_A = alpha (Q . F) + beta (P * F) + F          (eq. 3)

Eq. 1 is a spatial normalisation (Q sums to 1 over the positions), not a softmax; a small
`eps` is added to F^ so an all-zero F^ gives the uniform Q. Eq. 2's printed denominator
sums over both indices i', j' (one softmax over the whole M x M matrix), which we follow by
default (`correlation_norm = "global"`); "row" is the per-row softmax of DANet-style
position attention. Q is one channel (a spatial map, broadcast over C). Branch widths C / r
with r = `reduction` (8) and the hidden width of the spatial block (C / r) are our choice
(the paper gives none). alpha and beta are learnable scalars initialised to 0 (so the
module starts as the identity, as DANet's gammas).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("global", "row")


def spatial_normalize(fhat, eps: float = 1e-6):
  """Eq. 1: [B, H, W, K] non-negative -> Q [B, H, W, K] summing to 1 over (H, W)."""
  fhat = fhat.astype(jnp.float32) + eps
  return fhat / jnp.sum(fhat, axis=(1, 2), keepdims=True)


def correlation_map(f1, f2, norm: str = "global"):
  """Eq. 2: F' [B, M, C'], F'' [B, M, C'] -> P [B, M, M] (softmax of F' F''^T over all M x M
  entries for "global", over each row for "row")."""
  if norm not in NORMS:
    raise ValueError(f"correlation_norm must be one of {NORMS}, got {norm!r}")
  ftilde = jnp.einsum("bmc,bnc->bmn", f1.astype(jnp.float32), f2.astype(jnp.float32))
  if norm == "row":
    return jax.nn.softmax(ftilde, axis=-1)
  b, m, n = ftilde.shape
  return jax.nn.softmax(ftilde.reshape(b, m * n), axis=-1).reshape(b, m, n)


def combine(f, q, p, alpha, beta):
  """Eq. 3: F [B, H, W, C], Q [B, H, W, 1] | None, P [B, M, M] | None -> F_A [B, H, W, C]."""
  out = f.astype(jnp.float32)
  if q is not None:
    out = out + alpha * (q * f)
  if p is not None:
    b, h, w, c = f.shape
    pf = jnp.einsum("bmn,bnc->bmc", p, f.reshape(b, h * w, c).astype(jnp.float32))
    out = out + beta * pf.reshape(b, h, w, c)
  return out


class LesionFeatureAttention(nn.Module):
  """F [B, H, W, C] -> (F_A [B, H, W, C] float32, {"q": [B, H, W], "p": [B, M, M], "alpha": (),
  "beta": ()})."""

  spatial: bool = True
  correlation: bool = True
  reduction: int = 8
  correlation_norm: str = "global"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f):
    c = f.shape[-1]
    width = max(c // self.reduction, 1)
    conv = lambda k, n, name: nn.Conv(n, (k, k), padding=k // 2, dtype=self.dtype, name=name)
    maps, q, p = {}, None, None
    if self.spatial:
      x = conv(1, width, "spatial_conv1x1")(f)
      x = nn.relu(conv(3, width, "spatial_conv3x3_0")(x))
      fhat = nn.relu(conv(3, 1, "spatial_conv3x3_1")(x))
      q = spatial_normalize(fhat)
      maps["q"] = q[..., 0]
    if self.correlation:
      b, h, w, _ = f.shape
      branches = [conv(3, width, f"correlation{i}_conv3x3")(conv(1, width, f"correlation{i}_conv1x1")(f))
                  for i in range(2)]
      p = correlation_map(*(x.reshape(b, h * w, width) for x in branches), self.correlation_norm)
      maps["p"] = p
    alpha = self.param("alpha", nn.initializers.zeros, ())
    beta = self.param("beta", nn.initializers.zeros, ())
    maps.update(alpha=alpha, beta=beta)
    return combine(f, q, p, alpha, beta), maps
