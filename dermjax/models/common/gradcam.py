"""Grad-CAM (Selvaraju et al. 2017) of a classifier head on a feature map, inside the model.

The head is a bound Flax submodule; its gradient is taken with `nn.vjp` (a lifted transform,
so no parameters are copied). For a global-average-pool + dense head Grad-CAM is the class
activation map of Zhou et al. 2016 (CAM = sum_c w_c A_c) through a ReLU, divided by h * w.
"""

import flax.linen as nn
import jax.numpy as jnp


def grad_cam(features, grads):
  """features, grads [B, h, w, C] -> [B, h, w]: ReLU(sum_c alpha_c A_c), alpha_c = mean_hw grad_c."""
  alpha = jnp.mean(grads, axis=(1, 2))
  return nn.relu(jnp.einsum("bhwc,bc->bhw", features, alpha))


def head_grad_cam(head: nn.Module, features, target: int = 0, **kw):
  """(logits [B, K], Grad-CAM [B, h, w] of logits[:, target]) of `head(features, **kw)`.

  The head must treat examples independently (no batch statistics), so one backward pass of
  the summed target logit gives every example's own gradient.
  """
  logits, vjp = nn.vjp(lambda mdl, x: mdl(x, **kw), head, features)
  cotangent = jnp.zeros_like(logits).at[:, target].set(1.0)
  _, grads = vjp(cotangent)
  return logits, grad_cam(features, grads)
