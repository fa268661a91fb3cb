"""The gaze model's six structure masks (thesis eqs. 17-19) and their presences (Table 1).

Pure functions on arrays; they work on numpy and jax arrays alike (jnp ops accept both),
so the data layer counts presences with exactly the code the loss uses on device.
"""

import jax.numpy as jnp

from dermjax.data import schema


def structure_masks(masks):
  """Lesion/attribute stack -> the six gaze structures.

  masks: [..., H, W, 1 + A] with channel 0 the lesion and then schema.ATTRIBUTES (0/1).
  Returns [..., H, W, S] float32, channels schema.STRUCTURES:
    dermo  = OR of the gaze attributes            (eq. 17)
    skin   = NOT(lesion OR dermo)                 (eq. 18)
    lesion' = NOT(skin OR dermo)                  (eq. 19)
  """
  masks = jnp.asarray(masks) > 0.5
  lesion = masks[..., 0]
  attributes = masks[..., 1:][..., jnp.asarray(schema.GAZE_ATTRIBUTE_INDICES)]
  dermo = jnp.any(attributes, axis=-1)
  skin = ~(lesion | dermo)
  lesion_ = ~(skin | dermo)
  out = jnp.concatenate([lesion_[..., None], skin[..., None], attributes], axis=-1)
  return out.astype(jnp.float32)


def structure_presence(structures):
  """[..., H, W, S] structure masks -> [..., S] bool: the structure has at least one pixel."""
  return jnp.any(jnp.asarray(structures) > 0.5, axis=(-3, -2))
