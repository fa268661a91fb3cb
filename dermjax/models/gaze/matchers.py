"""One-to-one assignment of ground-truth structures to predicted masks (Hungarian algorithm).

`match(cost [B, S, T], valid_rows [B, S], method)` -> [B, S] int32: the predicted step t
matched to GT structure s, or -1 when s is unmatched (absent, invalid, or left over when
more than T structures are present). Two interchangeable implementations:

  "host"    scipy.optimize.linear_sum_assignment through `jax.pure_callback`.
  "device"  optax.assignment.hungarian_algorithm, vmapped over the batch.

Both run under jit, vmap and on a sharded batch, and neither passes a gradient (the cost
is wrapped in stop_gradient; the result is an integer index array).

`steps` (config.loss.match_steps) says which predicted steps may be matched:
  "all"            any of the T steps (the thesis text: Hungarian on the S x T matrix).
  "first_present"  only the first k steps, k = the number of valid rows of that image (the
                   thesis code, which gives absent structures cost 1 and matches the present
                   ones against steps 0..k-1, so the first gazes carry the present structures).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

METHODS = ("host", "device")
STEPS = ("all", "first_present")
# Cost given to invalid rows: above any real cost (1 - softIoU is in [0, 1]) by far more
# than the spread of real costs, so a valid row is never displaced by an invalid one.
ABSENT_COST = 1e4


def _allowed_cols(valid_rows, num_cols, steps):
  """[..., T] bool: the steps that may be matched (numpy or jax arrays, see module doc)."""
  xp = np if isinstance(valid_rows, np.ndarray) else jnp
  if steps == "all":
    return xp.ones(valid_rows.shape[:-1] + (num_cols,), bool)
  if steps == "first_present":
    k = xp.sum(valid_rows.astype(xp.int32), axis=-1, keepdims=True)
    return xp.arange(num_cols) < k
  raise ValueError(f"config.loss.match_steps must be one of {STEPS}, got {steps!r}")


def _masked_cost(cost, valid_rows, allowed_cols):
  """Invalid rows and disallowed columns -> ABSENT_COST so the optimum matches valid rows to
  allowed columns first (cost [..., S, T], valid_rows [..., S], allowed_cols [..., T])."""
  xp = np if isinstance(cost, np.ndarray) else jnp
  return xp.where(valid_rows[..., :, None] & allowed_cols[..., None, :], cost, ABSENT_COST)


def _assign_from_pairs(rows, cols, num_rows):
  """(row indices, column indices) -> [num_rows] column per row, -1 for unassigned rows."""
  return jnp.full((num_rows,), -1, jnp.int32).at[rows].set(cols.astype(jnp.int32))


def _host_assign(cost, valid_rows, steps="all"):
  """numpy: cost [..., S, T] float, valid_rows [..., S] bool -> [..., S] int32 (see module doc)."""
  cost = np.asarray(cost, np.float64)
  valid_rows = np.broadcast_to(np.asarray(valid_rows, bool), cost.shape[:-1])
  s, t = cost.shape[-2:]
  flat_cost = cost.reshape(-1, s, t)
  flat_valid = valid_rows.reshape(-1, s)
  flat_cols = _allowed_cols(flat_valid, t, steps)
  out = np.full(flat_valid.shape, -1, np.int32)
  for b in range(flat_cost.shape[0]):
    c = _masked_cost(flat_cost[b], flat_valid[b], flat_cols[b])
    # A diverged model's NaN cost must reach the trainer's divergence guard, not stop scipy.
    c = np.nan_to_num(np.asarray(c), nan=ABSENT_COST, posinf=ABSENT_COST, neginf=-ABSENT_COST)
    rows, cols = scipy.optimize.linear_sum_assignment(c)
    out[b, rows] = cols
  keep = flat_valid & np.take_along_axis(flat_cols, np.maximum(out, 0), axis=1)
  out[~keep] = -1
  return out.reshape(valid_rows.shape)


def match_host(cost, valid_rows, steps: str = "all"):
  """Hungarian matching on the host (scipy). cost [B, S, T], valid_rows [B, S] -> [B, S] int32."""
  _allowed_cols(np.zeros((1,), bool), 1, steps)  # Checks `steps` at trace time.
  cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
  valid_rows = valid_rows.astype(bool)
  out_type = jax.ShapeDtypeStruct(valid_rows.shape, jnp.int32)
  # broadcast_all: under vmap every argument arrives with the vmapped axes materialised.
  return jax.pure_callback(functools.partial(_host_assign, steps=steps), out_type, cost,
                           valid_rows, vmap_method="broadcast_all")


def match_device(cost, valid_rows, steps: str = "all"):
  """Hungarian matching on the device (optax). cost [B, S, T], valid_rows [B, S] -> [B, S] int32."""
  cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
  valid_rows = valid_rows.astype(bool)
  num_rows, num_cols = cost.shape[-2:]

  def one(c, v):
    allowed = _allowed_cols(v, num_cols, steps)
    rows, cols = optax.assignment.hungarian_algorithm(_masked_cost(c, v, allowed))
    assign = _assign_from_pairs(rows, cols, num_rows)
    return jnp.where(v & allowed[jnp.maximum(assign, 0)], assign, -1)

  return jax.vmap(one)(cost, valid_rows)


def match(cost, valid_rows, method: str = "host", steps: str = "all"):
  """Hungarian one-to-one matching of GT rows to predicted columns, only over valid rows.

  cost: [B, S, T] (e.g. 1 - softIoU between GT structure s and predicted mask t);
  valid_rows: [B, S] bool (structure present and annotated); steps: "all" | "first_present"
  (module doc). Returns [B, S] int32, the matched column of each row or -1. Minimises the
  summed cost over min(#valid, #allowed steps) pairs.
  """
  if method == "host":
    return match_host(cost, valid_rows, steps)
  if method == "device":
    return match_device(cost, valid_rows, steps)
  raise ValueError(f"config.loss.matcher must be one of {METHODS}, got {method!r}")
