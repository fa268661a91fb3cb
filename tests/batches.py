"""Test batches made from dermjax.data.schema.batch_spec (one spec for the pipeline, scripts
and tests): host batches (uint8, as the input pipeline yields) and model batches (float image
and masks, as the jitted step sees after dermjax.data.augment)."""

import jax.numpy as jnp
import numpy as np

from dermjax.data import schema


def host_batch(batch_size, image_size, **fields):
  """Real rows (valid 1, index 0..B-1, masks marked ground truth, labels 0) of the host
  batch spec, every other entry its padding value; `fields` override entries."""
  batch = schema.padding_batch(image_size, batch_size)
  batch.update(valid=np.ones(batch_size, np.float32), index=np.arange(batch_size, dtype=np.int32),
               has_lesion_mask=np.ones(batch_size, np.float32),
               has_attributes=np.ones(batch_size, np.float32),
               label=np.zeros(batch_size, np.int32), melanoma=np.zeros(batch_size, np.int32))
  spec = schema.batch_spec(image_size, batch_size)
  for name, value in fields.items():
    if name not in spec:
      raise KeyError(f"{name!r} is not in schema.batch_spec: {sorted(spec)}")
    batch[name] = np.asarray(value, spec[name][1] if name not in ("image", "masks") else None)
  return batch


def model_batch(batch_size, image_size, **fields):
  """host_batch as jnp arrays with float32 image and masks (the model's view)."""
  batch = host_batch(batch_size, image_size, **fields)
  out = {k: jnp.asarray(v) for k, v in batch.items()}
  out["image"] = jnp.asarray(batch["image"], jnp.float32)
  out["masks"] = jnp.asarray(batch["masks"], jnp.float32)
  return out
