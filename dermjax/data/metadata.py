"""Patient metadata (age, sex, anatomic site) as a feature vector, on device.

The batch carries raw values (schema.py: age [B] float32 NaN if missing, sex / site [B]
int32 -1 if missing); a model that reads metadata encodes it here (or its own way).
Missing values are explicit indicator features, never a real value: a missing age is
(0, 1), a missing sex or site sets its own "missing" slot of the one-hot.
"""

import jax.numpy as jnp

from dermjax.data import schema


def _one_hot_or_missing(values, n):
  """int [B] (-1 or >= n: missing) -> [B, n + 1], the last column marking missing."""
  values = jnp.asarray(values, jnp.int32)
  values = jnp.where((values >= 0) & (values < n), values, n)
  return (values[:, None] == jnp.arange(n + 1)).astype(jnp.float32)


def encode(age, sex, site):
  """age [B] float (NaN missing), sex [B], site [B] int (-1 missing) -> float32 [B, META_DIM]:
  [age / 100, age missing, sex one-hot, sex missing, site one-hot, site missing]."""
  age = jnp.asarray(age, jnp.float32)
  missing = jnp.isnan(age)
  age_features = jnp.stack([jnp.where(missing, 0.0, age / 100.0), missing.astype(jnp.float32)], -1)
  return jnp.concatenate([age_features, _one_hot_or_missing(sex, len(schema.SEXES)),
                          _one_hot_or_missing(site, len(schema.SITES))], axis=-1)


def encode_batch(batch):
  """encode() of a batch dict's age / sex / site."""
  return encode(batch["age"], batch["sex"], batch["site"])
