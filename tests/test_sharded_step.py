"""A train step sharded over 8 host devices gives the same loss and gradients as one device.

XLA_FLAGS must be set before jax initialises, and pytest imports every test module into
one process, so the check runs in a subprocess (this file's __main__).
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _check():
  import jax
  import ml_collections
  import numpy as np

  from dermjax import steps
  import test_train
  import tiny_model

  assert jax.device_count() == 8, jax.devices()
  config = test_train.tiny_config()
  # SGD with lr 1 and no momentum / decay: new params = params - grads, so params compare grads.
  config.optim.update(name="sgd", momentum=0.0, learning_rate=1.0, weight_decay=0.0)
  config.optim.groups = ml_collections.ConfigDict()
  batch = test_train.host_batch(batch_size=16)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  module = tiny_model.build(config)
  mean, std = np.full(3, 100.0, np.float32), np.full(3, 60.0, np.float32)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
    state, tx, mask = steps.create_train_state(config, module, shapes, mean=mean, std=std,
                                               steps_per_epoch=2, mesh=mesh)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rep = steps.replicated(mesh)
    step = jax.jit(steps.make_train_step(module, tiny_model, tx, mask, config, {}, mean, std),
                   in_shardings=(rep, sharding), out_shardings=(rep, rep), donate_argnums=0)
    global_batch = jax.device_put(batch, sharding)
    assert len(global_batch["image"].sharding.device_set) == len(devices)
    params0 = jax.tree.map(np.array, state.params)
    state, metrics = step(state, global_batch)
    grads = jax.tree.map(lambda a, b: a - np.asarray(b), params0, state.params)
    results.append((float(metrics["loss"].compute()), grads,
                    jax.tree.map(np.asarray, state.batch_stats)))
  (loss1, grads1, bn1), (loss8, grads8, bn8) = results
  np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads1, grads8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), bn1, bn8)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads1)) > 0
  print("SHARDED_STEP_OK")


def test_sharded_step_matches_single_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip(),
             PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE),
                                         os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and "SHARDED_STEP_OK" in proc.stdout, proc.stdout + proc.stderr


if __name__ == "__main__":
  _check()
