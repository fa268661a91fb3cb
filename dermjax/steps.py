"""The jitted steps every run shares: TrainState, its creation, and the train / eval steps.

Below both the trainer (dermjax.train) and the evaluation half of a run (dermjax.evaluation),
which import them; scripts/profile_step.py times exactly these. Host batches (uint8,
dermjax.data.schema.batch_spec) become model batches inside the step (`preprocess`:
normalisation and, in training, augmentation on device).
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import traverse_util

from dermjax import divergence
from dermjax import input_pipeline
from dermjax import optim
from dermjax import weights
from dermjax.data import augment

@flax.struct.dataclass
class TrainState:
  """Everything a restart needs besides the data position (kept in the checkpoint's meta)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array   # raw uint32 key; per-step keys are fold_in(rng, step)


def create_mesh():
  """1-D data-parallel mesh over all devices of all processes."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def model_variables(params, batch_stats):
  """The variables dict module.apply takes (batch_stats only where the model has them)."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _split(tree, mask):
  """Flat {path: leaf} dicts (trainable, frozen) of a params tree by a bool mask tree."""
  flat = traverse_util.flatten_dict(flax.core.unfreeze(tree))
  flat_mask = traverse_util.flatten_dict(flax.core.unfreeze(mask))
  trainable = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return trainable, frozen


def _merge(trainable, frozen):
  return traverse_util.unflatten_dict({**trainable, **frozen})


def preprocess(batch, rng, config, mean, std, *, train: bool):
  return augment.device_preprocess(batch, rng, mean=mean, std=std,
                                   aug_config=config.data.augment, train=train)


def init_variables(module, config, batch_shapes, rng, mean, std):
  """Model variables for host batches shaped like `batch_shapes` ({name: ShapeDtypeStruct})."""
  params_rng, dropout_rng = jax.random.split(rng)
  host_batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_shapes.items()}
  batch = preprocess(host_batch, params_rng, config, mean, std, train=False)
  variables = module.init({"params": params_rng, "dropout": dropout_rng, "sample": dropout_rng},
                          batch, train=False)
  return flax.core.unfreeze(variables)


def create_train_state(config, module, batch_shapes, *, mean, std, steps_per_epoch, mesh):
  """(TrainState replicated on `mesh`, optax transform, trainable mask).

  batch_shapes: {name: ShapeDtypeStruct} of a host batch (Datasets.batch_shapes()).
  """
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch_shapes.items()}
  init = jax.jit(functools.partial(init_variables, module, config, shapes),
                 out_shardings=replicated(mesh))
  variables = init(init_rng, np.asarray(mean, np.float32), np.asarray(std, np.float32))
  variables = weights.apply_pretrained(variables, config.model)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  tx = optim.create_optimizer(config.optim, params, steps_per_epoch)
  opt_state = jax.jit(tx.init, out_shardings=replicated(mesh))(params)
  mask = optim.trainable_mask(params, config.optim)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=opt_state, rng=train_rng)
  state = jax.device_put(state, replicated(mesh))
  return state, tx, mask


def make_train_step(module, model_lib, tx, mask, config, loss_stats, mean, std):
  """(state, host batch) -> (state, {name: clu Average}). Gradients only for trainable params.

  metrics["applied"] is 1 when the update was applied, 0 when the divergence guard
  (divergence.update_ok) dropped it."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  def train_step(state, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    aug_rng, dropout_rng, sample_rng = jax.random.split(step_rng, 3)
    batch = preprocess(batch, aug_rng, config, mean, std, train=True)
    trainable, frozen = _split(state.params, mask)

    def loss_fn(trainable):
      params = _merge(trainable, frozen)
      outputs, new_vars = module.apply(model_variables(params, state.batch_stats), batch, train=True,
                                       mutable=["batch_stats"],
                                       rngs={"dropout": dropout_rng, "sample": sample_rng})
      loss, aux = model_lib.loss(outputs, batch, config, loss_stats)
      return loss, (aux, new_vars.get("batch_stats", state.batch_stats))

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    full_grads = _merge(grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
    new_trainable, _ = _split(optax.apply_updates(state.params, updates), mask)
    params = _merge(new_trainable, frozen)  # Frozen parameters stay bit-identical.
    grad_norm = optax.tree.norm(grads)
    # Divergence guard: an update from a non-finite or out-of-bounds loss / gradient is
    # dropped (state kept bit for bit, step still advances); the host reads "applied".
    ok = divergence.update_ok(loss, grad_norm, config.train)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    scalars = {"loss": loss, "grad_norm": grad_norm, "applied": ok, **aux}
    metrics = {k: clu_metrics.Average.from_model_output(jnp.asarray(v, jnp.float32))
               for k, v in scalars.items()}
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              batch_stats=keep(batch_stats, state.batch_stats),
                              opt_state=keep(opt_state, state.opt_state))
    return new_state, metrics

  return train_step


def make_eval_step(module, model_lib, config, loss_stats, mean, std, *, with_outputs=False):
  """(state, host batch) -> (valid-weighted loss sums, per-example arrays[, outputs])."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  eval_arrays = getattr(model_lib, "eval_arrays", None)

  def eval_step(state, batch):
    batch = preprocess(batch, state.rng, config, mean, std, train=False)
    outputs = module.apply(model_variables(state.params, state.batch_stats), batch, train=False)
    loss, aux = model_lib.loss(outputs, batch, config, loss_stats)
    count = jnp.sum(batch["valid"])
    sums = {k: jnp.asarray(v, jnp.float32) * count for k, v in {"loss": loss, **aux}.items()}
    sums["count"] = count
    arrays = {"label": batch["label"], "melanoma": batch["melanoma"], "valid": batch["valid"],
              "index": batch["index"]}
    if "logits" in outputs:
      arrays["logits"] = outputs["logits"].astype(jnp.float32)
    if eval_arrays is not None:
      extra = eval_arrays(outputs, batch, config)
      clash = set(extra) & set(arrays)
      if clash:
        raise ValueError(f"{model_lib.__name__}.eval_arrays returned reserved keys {sorted(clash)}")
      arrays.update(extra)
    if with_outputs:
      return sums, arrays, outputs
    return sums, arrays

  return eval_step


def jit_steps(module, model_lib, tx, mask, config, loss_stats, mean, std, mesh):
  """(train_step, eval_step) compiled for `mesh`: state replicated (donated to the train
  step), batches sharded along "data". The one place the trainer and scripts/profile_step.py
  get their steps from."""
  sharding = input_pipeline.batch_sharding(mesh)
  rep = replicated(mesh)
  train_step = jax.jit(
      make_train_step(module, model_lib, tx, mask, config, loss_stats, mean, std),
      in_shardings=(rep, sharding), out_shardings=(rep, rep), donate_argnums=0)
  eval_step = jax.jit(
      make_eval_step(module, model_lib, config, loss_stats, mean, std),
      in_shardings=(rep, sharding), out_shardings=(rep, sharding))
  return train_step, eval_step
