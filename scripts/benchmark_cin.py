"""CIN stage-2 train-step throughput and the correlation block's share (BENCHMARKS.md "CIN").

  PYTHONPATH=$PWD python scripts/benchmark_cin.py [--row cin] [--batch 4] [--steps 3] [--ablate]

Times the real jitted train step (dermjax.steps.make_train_step: augmentation, the frozen
stage 1, both branches, distinguish, losses, optimiser) of configs/cin.py:<row>,paper (448
px) on random data, then the correlation block alone (two 1x1 + 3x3 branches, F' F''^T,
eq. 2 softmax, P * F; forward + backward on ResNet-18 layer4 features [B, 14, 14, 512]) once
per branch. --ablate also times the whole step with the correlation block removed
(model.correlation off: a second compile). Prints one JSON line.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dermjax import config_lib, models, optim, steps
from dermjax.data import schema
from dermjax.models.cin.attention import LesionFeatureAttention

TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cin.py")


def timed(fn, *args, steps):
  """(compile + first call seconds, mean seconds of `steps` further calls)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    out = jax.block_until_ready(fn(*args))
  return first, (time.perf_counter() - start) / steps, out


def step_time(config, batch_size, num_steps):
  """(compile + first step, seconds per train step) of `config` at batch `batch_size`
  (random uint8 data)."""
  model_lib = models.get(config.model.name)
  module = model_lib.build(config)
  size = config.data.image_size
  rng = np.random.default_rng(0)
  batch = schema.padding_batch(size, batch_size)
  batch.update(image=rng.integers(0, 255, (batch_size, size, size, 3), np.uint8),
               label=(np.arange(batch_size) % 2).astype(np.int32), valid=np.ones(batch_size, np.float32),
               has_lesion_mask=np.ones(batch_size, np.float32))
  mean, std = np.full(3, 128.0, np.float32), np.full(3, 64.0, np.float32)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  variables = jax.jit(lambda r: steps.init_variables(module, config, shapes, r, mean, std))(
      jax.random.PRNGKey(0))
  tx = optim.create_optimizer(config.optim, variables["params"], 100)
  mask = optim.trainable_mask(variables["params"], config.optim)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}),
                           opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(1))
  stats = {"class_weights": np.array([0.6, 2.5], np.float32)}
  step = jax.jit(steps.make_train_step(module, model_lib, tx, mask, config, stats, mean, std))
  first, per_step, _ = timed(lambda s, b: step(s, b)[1]["loss"].compute(), state, batch, steps=num_steps)
  return first, per_step


def correlation_time(batch_size, steps, hw=14, channels=512):
  """Seconds of forward + backward of the correlation block on [B, hw, hw, C] features."""
  module = LesionFeatureAttention(spatial=False, correlation=True)
  f = jax.random.normal(jax.random.key(0), (batch_size, hw, hw, channels))
  variables = module.init(jax.random.key(1), f)
  variables = {"params": {**variables["params"], "beta": jnp.float32(1.0)}}

  @jax.jit
  def fwd_bwd(variables, f):
    return jax.grad(lambda v, f: jnp.sum(module.apply(v, f)[0] ** 2), argnums=(0, 1))(variables, f)

  _, per_call, _ = timed(fwd_bwd, variables, f, steps=steps)
  return per_call


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--row", default="cin")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--ablate", action="store_true")
  args = parser.parse_args()
  config = config_lib.load_config(TABLE, f"{args.row},paper")
  config.data.batch_size = args.batch
  first, per_step = step_time(config, args.batch, args.steps)
  branches = 2 if config.model.use_distinguish else 1
  corr = correlation_time(args.batch, args.steps) * branches if config.model.use_attention else 0.0
  m = 14 * 14
  result = {
      "row": args.row, "image_size": config.data.image_size, "batch": args.batch,
      "devices": [str(d) for d in jax.devices()], "compile_and_first_step_s": round(first, 2),
      "step_s": round(per_step, 3), "images_per_s": round(args.batch / per_step, 3),
      "correlation_fwd_bwd_s_all_branches": round(corr, 4),
      "correlation_share": round(corr / per_step, 4),
      "mm_matrix_mib_at_batch_32": round(32 * m * m * 4 / 2**20, 2),
  }
  if args.ablate:
    off = config_lib.load_config(TABLE, f"{args.row},paper")
    off.data.batch_size = args.batch
    off.model.use_correlation = False
    _, off_step = step_time(off, args.batch, args.steps)
    result["step_s_without_correlation"] = round(off_step, 3)
    result["correlation_share_by_ablation"] = round(1 - off_step / per_step, 4)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
