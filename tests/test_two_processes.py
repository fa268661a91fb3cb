"""The trainer as 2 JAX processes on localhost (jax.distributed, gloo CPU collectives, 2
forced CPU devices each) equals a 1-process run over the same global batches, and each
process loads only its own rows of every global batch.

Each run is a subprocess of this file (XLA_FLAGS and jax.distributed must be set before JAX
starts): the real input pipeline (dermjax.input_pipeline.create_datasets on the synthetic
ISIC set, prepared once by the 1-process run), dermjax.steps.create_train_state and the
trainer's jitted train step (steps.jit_steps), N steps. Process 0 alone writes the
parameters; every process records the dataset indices its loader read and the global rows
of the batches it holds.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 3
LOOKAHEAD = 12  # Batches of the reference index column (prefetch may read ahead).


def _worker(mode, out_dir, data_dir, port, process_id):
  import jax
  import ml_collections
  if mode == "multi":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process_id)
  from dermjax import input_pipeline, models, steps
  from dermjax.data import loader
  import test_train

  models.MODELS["tiny"] = "tiny_model"
  reads = []
  original = loader.PreparedExampleLoader.read

  def read(self, index):
    reads.append(int(index))
    return original(self, index)

  loader.PreparedExampleLoader.read = read
  positions = []  # Global positions (step * global batch + row) this process asked for.
  host_rows = input_pipeline._HostRows.__call__

  def rows_call(self, j):
    local = self.global_batch_size // self.process_count
    batch, row = divmod(int(j), local)
    positions.append(batch * self.global_batch_size + self.process_index * local + row)
    return host_rows(self, j)

  input_pipeline._HostRows.__call__ = rows_call
  config = test_train.tiny_config()
  config.data.synthetic_dir = data_dir
  config.data.num_workers = 0
  config.data.prefetch = 1
  # SGD: Adam would turn the float-noise gradient of the bias before BN into lr-sized steps.
  config.optim.update(name="sgd", momentum=0.0, learning_rate=0.1, weight_decay=0.0)
  config.optim.groups = ml_collections.ConfigDict()
  assert jax.device_count() == 4 and jax.local_device_count() == (2 if mode == "multi" else 4)
  mesh = steps.create_mesh()
  datasets = input_pipeline.create_datasets(config.data, mesh=mesh, workdir=out_dir)
  model_lib = models.get("tiny")
  module = model_lib.build(config)
  loss_stats = model_lib.loss_stats(datasets.stats, config)
  state, tx, mask = steps.create_train_state(
      config, module, datasets.batch_shapes(), mean=datasets.mean, std=datasets.std,
      steps_per_epoch=datasets.steps_per_epoch, mesh=mesh)
  train_step, _ = steps.jit_steps(module, model_lib, tx, mask, config, loss_stats,
                                  datasets.mean, datasets.std, mesh)
  held = []  # Per step: {global row: dataset index} of the rows this process holds.
  for step in range(LOOKAHEAD if mode == "single" else STEPS):
    batch = next(datasets.train)
    rows = {}
    for shard in batch["index"].addressable_shards:
      start = shard.index[0].start or 0
      rows.update({start + i: int(v) for i, v in enumerate(np.asarray(shard.data))})
    held.append(rows)
    if step < STEPS:
      state, metrics = train_step(state, batch)
  pid = jax.process_index()
  with open(os.path.join(out_dir, f"{mode}_{pid}.json"), "w") as f:
    json.dump({"reads": reads, "positions": positions, "held": [{str(k): v for k, v in r.items()} for r in held],
               "loss": float(metrics["loss"].compute()), "steps": int(state.step)}, f)
  if pid == 0:  # Only process 0 writes the (replicated) parameters.
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    np.savez(os.path.join(out_dir, f"{mode}_params.npz"),
             **{jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in flat})
  if mode == "multi":
    jax.distributed.shutdown()
  print("WORKER_OK")


def _env(devices):
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
              PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE),
                                          os.environ.get("PYTHONPATH", "")]))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  out, data = str(tmp_path), str(tmp_path / "data")
  me = os.path.abspath(__file__)
  single = subprocess.run([sys.executable, me, "single", out, data, "0", "0"], env=_env(4),
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0 and "WORKER_OK" in single.stdout, single.stderr[-4000:]
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, me, "multi", out, data, port, str(i)], env=_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0 and "WORKER_OK" in stdout, stderr[-4000:]

  ref = np.load(os.path.join(out, "single_params.npz"))
  multi = np.load(os.path.join(out, "multi_params.npz"))
  assert not os.path.exists(os.path.join(out, "multi_params_1.npz"))
  assert sorted(ref.files) == sorted(multi.files)
  for k in ref.files:
    np.testing.assert_allclose(multi[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)

  info = {name: json.load(open(os.path.join(out, f"{name}.json")))
          for name in ("single_0", "multi_0", "multi_1")}
  assert info["multi_0"]["steps"] == info["single_0"]["steps"] == STEPS
  np.testing.assert_allclose(info["multi_0"]["loss"], info["single_0"]["loss"], rtol=1e-5)
  column = [{int(k): v for k, v in r.items()} for r in info["single_0"]["held"]]  # 8 rows
  assert all(sorted(r) == list(range(8)) for r in column)
  assert set(info["single_0"]["reads"]) <= {v for r in column for v in r.values()}
  for p in range(2):
    mine = range(4 * p, 4 * p + 4)
    held = [{int(k): v for k, v in r.items()} for r in info[f"multi_{p}"]["held"]]
    for step, rows in enumerate(held):  # Its own 4 rows of each global batch, the same examples.
      assert sorted(rows) == list(mine)
      assert rows == {r: column[step][r] for r in mine}
    positions = info[f"multi_{p}"]["positions"]
    assert positions and all(pos % 8 in mine for pos in positions)  # Never another's row.
    assert {s * 8 + r for s in range(STEPS) for r in mine} <= set(positions)
    assert len(info[f"multi_{p}"]["reads"]) == len(positions)      # One read per own row.
    assert {column[s][r] for s in range(STEPS) for r in mine} <= set(info[f"multi_{p}"]["reads"])

if __name__ == "__main__":
  sys.path.insert(0, HERE)
  _worker(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
