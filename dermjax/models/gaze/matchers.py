"""One-to-one assignment of ground-truth structures to predicted masks (Hungarian algorithm).

`match(cost [B, S, T], valid_rows [B, S], method)` -> [B, S] int32: the predicted step t
matched to GT structure s, or -1 when s is unmatched (absent, invalid, or left over when
more than T structures are present). Two interchangeable implementations:

  "host"    scipy.optimize.linear_sum_assignment through `jax.pure_callback`.
  "device"  optax.assignment.hungarian_algorithm, vmapped over the batch.

Both run under jit, vmap and on a sharded batch, and neither passes a gradient (the cost
is wrapped in stop_gradient; the result is an integer index array).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

METHODS = ("host", "device")
# Cost given to invalid rows: above any real cost (1 - softIoU is in [0, 1]) by far more
# than the spread of real costs, so a valid row is never displaced by an invalid one.
ABSENT_COST = 1e4


def _masked_cost(cost, valid_rows):
  """Invalid rows -> ABSENT_COST so the optimum matches valid rows first."""
  return jnp.where(valid_rows[..., None], cost, ABSENT_COST)


def _assign_from_pairs(rows, cols, num_rows):
  """(row indices, column indices) -> [num_rows] column per row, -1 for unassigned rows."""
  return jnp.full((num_rows,), -1, jnp.int32).at[rows].set(cols.astype(jnp.int32))


def _host_assign(cost, valid_rows):
  """numpy: cost [..., S, T] float, valid_rows [..., S] bool -> [..., S] int32 (see module doc)."""
  cost = np.asarray(cost, np.float64)
  valid_rows = np.broadcast_to(np.asarray(valid_rows, bool), cost.shape[:-1])
  s, t = cost.shape[-2:]
  flat_cost = cost.reshape(-1, s, t)
  flat_valid = valid_rows.reshape(-1, s)
  out = np.full(flat_valid.shape, -1, np.int32)
  for b in range(flat_cost.shape[0]):
    c = np.where(flat_valid[b][:, None], flat_cost[b], ABSENT_COST)
    # A diverged model's NaN cost must reach the trainer's divergence guard, not stop scipy.
    c = np.nan_to_num(c, nan=ABSENT_COST, posinf=ABSENT_COST, neginf=-ABSENT_COST)
    rows, cols = scipy.optimize.linear_sum_assignment(c)
    out[b, rows] = cols
  out[~flat_valid] = -1
  return out.reshape(valid_rows.shape)


def match_host(cost, valid_rows):
  """Hungarian matching on the host (scipy). cost [B, S, T], valid_rows [B, S] -> [B, S] int32."""
  cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
  valid_rows = valid_rows.astype(bool)
  out_type = jax.ShapeDtypeStruct(valid_rows.shape, jnp.int32)
  # broadcast_all: under vmap every argument arrives with the vmapped axes materialised.
  return jax.pure_callback(_host_assign, out_type, cost, valid_rows, vmap_method="broadcast_all")


def match_device(cost, valid_rows):
  """Hungarian matching on the device (optax). cost [B, S, T], valid_rows [B, S] -> [B, S] int32."""
  cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
  valid_rows = valid_rows.astype(bool)
  num_rows = cost.shape[-2]

  def one(c, v):
    rows, cols = optax.assignment.hungarian_algorithm(_masked_cost(c, v))
    return jnp.where(v, _assign_from_pairs(rows, cols, num_rows), -1)

  return jax.vmap(one)(cost, valid_rows)


def match(cost, valid_rows, method: str = "host"):
  """Hungarian one-to-one matching of GT rows to predicted columns, only over valid rows.

  cost: [B, S, T] (e.g. 1 - softIoU between GT structure s and predicted mask t);
  valid_rows: [B, S] bool (structure present and annotated). Returns [B, S] int32, the
  matched column of each row or -1. Minimises the summed cost over min(#valid, T) pairs.
  """
  if method == "host":
    return match_host(cost, valid_rows)
  if method == "device":
    return match_device(cost, valid_rows)
  raise ValueError(f"config.loss.matcher must be one of {METHODS}, got {method!r}")
