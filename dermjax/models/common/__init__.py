"""What every paper's model can use: compute dtype, crop-and-resize (crop.py), overlays (explain.py), Grad-CAM (gradcam.py)."""

import jax.numpy as jnp


def compute_dtype(config):
  """jnp dtype of `config.model.dtype` ("float32" | "bfloat16")."""
  name = config.model.get("dtype", "float32")
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {name!r}")
  return jnp.dtype(name)
