"""Speed of a config's real train and eval steps: compile time, images/s, FLOPs, MFU, memory.

  python scripts/profile_step.py --config=configs/gaze.py:thesis,paper [--config.model.dtype=bfloat16]
      [--num_warmup=2] [--num_timed=5] [--xla_dump_to=DIR] [--trace_dir=DIR] [--json_out=F]

The steps are the trainer's own (dermjax.steps.create_train_state / make_train_step /
make_eval_step, jitted with the trainer's shardings and donation) on a synthetic host batch
in the input pipeline's format (uint8 image and masks, so on-device augmentation and
normalisation are timed too), on every device of a data-parallel mesh. Reported:
  compile       tracing+lowering and XLA compilation seconds of each step
  train / eval  median seconds per step over --num_timed steps after --num_warmup, with
                the device synchronised after every step; images/s (global batch)
  FLOPs         per image, from the compiled program's XLA cost analysis
  MFU           achieved FLOP/s / the measured dense-matmul peak of the same device in the
                model's compute dtype (dermjax.profiling.matmul_peak_jax)
  memory        peak device bytes in use (GPU/TPU), process peak RSS (CPU), XLA's planned
                temp bytes of the train step
  trace         --trace_dir: a jax.profiler trace of two more train steps, and its most
                expensive ops per step (dermjax.profiling.trace_op_summary) in the JSON
  matcher       gaze model only (--matcher_breakdown): the host (scipy pure_callback) and
                device (optax) Hungarian matchers alone, jitted on the step's [B, S, T]
                cost shape, as a fraction of the train step (--compare_matcher_steps:
                also the whole train step with each)
Works unchanged on CPU, GPU and TPU. --num_timed=0 only compiles (e.g. compile time vs T).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dermjax import input_pipeline
from dermjax import models
from dermjax import profiling
from dermjax.models.gaze import flops as gaze_flops
from dermjax import steps
from dermjax import xla_cpu
from dermjax.data import schema

# Split-level stand-ins for a prepared dataset's stats.json (ISIC 2017 train, thesis Table 1).
SYNTHETIC_STATS = {
    "mean": [180.0, 150.0, 140.0],
    "std": [40.0, 45.0, 50.0],
    "num_examples": {"train": 2000},
    # dermjax.data.prepare's format: splits -> train -> structure_presence (name -> count).
    "splits": {"train": {"num_images": 2000, "structure_presence": dict(zip(
        schema.STRUCTURES, (2000, 2000, 1131, 126, 573, 116)))}},
}


def synthetic_host_batch(config, batch_size: int, seed: int = 0) -> dict:
  """A host batch of schema.batch_spec: random uint8 image, random 0/1 lesion and attribute
  masks (each attribute present in about half the images), masks marked ground truth,
  random labels and metadata, valid 1."""
  rng = np.random.default_rng(seed)
  s = int(config.data.image_size)
  batch = schema.padding_batch(s, batch_size, source_size=int(config.data.get("source_size", 0)))
  num_classes = max(int(config.model.num_classes), 2)
  masks = batch["masks"]
  for b in range(batch_size):
    for c in range(masks.shape[-1]):
      if c == 0 or rng.random() < 0.5:  # Rectangle of random size and position.
        y0, x0 = rng.integers(0, s // 2, 2)
        y1, x1 = y0 + rng.integers(1, s // 2 + 1, 2)
        masks[b, y0:y1, x0:x1, c] = 1
  random = {
      "image": rng.integers(0, 256, batch["image"].shape),
      "has_lesion_mask": np.ones(batch_size), "has_attributes": np.ones(batch_size),
      "label": rng.integers(0, num_classes, batch_size),
      "melanoma": rng.integers(0, 2, batch_size),
      "age": rng.uniform(20, 90, batch_size), "sex": rng.integers(0, len(schema.SEXES), batch_size),
      "site": rng.integers(0, len(schema.SITES), batch_size),
      "valid": np.ones(batch_size), "index": np.arange(batch_size),
  }
  if "source_image" in batch:   # the higher-resolution copy (data.source_size)
    random["source_image"] = rng.integers(0, 256, batch["source_image"].shape)
  batch.update({k: v.astype(batch[k].dtype) for k, v in random.items()})
  return batch


def build_steps(config):
  """The trainer's state, jitted train/eval steps and a sharded synthetic batch for `config`.

  Returns a dict: module, model_lib, state, train_step, eval_step (jax.jit-wrapped, as
  dermjax.train.train_and_evaluate jits them), batch (train batch), eval_batch.
  """
  mesh = steps.create_mesh()
  model_lib = models.get(config.model.name)
  module = model_lib.build(config)
  loss_stats_fn = getattr(model_lib, "loss_stats", None)
  loss_stats = loss_stats_fn(SYNTHETIC_STATS, config) if loss_stats_fn else {}
  mean = np.asarray(SYNTHETIC_STATS["mean"], np.float32)
  std = np.asarray(SYNTHETIC_STATS["std"], np.float32)
  sharding = input_pipeline.batch_sharding(mesh)
  host = synthetic_host_batch(config, int(config.data.batch_size), seed=config.seed)
  eval_host = synthetic_host_batch(config, int(config.data.eval_batch_size), seed=config.seed + 1)
  batch = jax.device_put(host, sharding)
  eval_batch = jax.device_put(eval_host, sharding)
  batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host.items()}
  state, tx, mask = steps.create_train_state(config, module, batch_shapes, mean=mean, std=std,
                                             steps_per_epoch=100, mesh=mesh)
  train_step, eval_step = steps.jit_steps(module, model_lib, tx, mask, config, loss_stats, mean,
                                          std, mesh)
  return {"module": module, "model_lib": model_lib, "state": state, "train_step": train_step,
          "eval_step": eval_step, "batch": batch, "eval_batch": eval_batch, "mask": mask}


def compile_step(jitted, *args):
  """(compiled, {"trace_lower_s", "compile_s"}) of a jitted function for these arguments."""
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  traced = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  return compiled, {"trace_lower_s": traced, "compile_s": time.perf_counter() - start}


def _time_train(compiled, state, batch, num_warmup, num_timed):
  """(state after the steps, per-step seconds). The state is donated: thread it through."""
  def step(carry):
    return compiled(carry[0], batch)
  (state, _), times = profiling.time_steps(step, (state, None), num_warmup=num_warmup,
                                           num_timed=num_timed)
  return state, times


def _time_eval(compiled, state, batch, num_warmup, num_timed):
  _, times = profiling.time_steps(lambda _: compiled(state, batch), None, num_warmup=num_warmup,
                                  num_timed=num_timed)
  return times


def matcher_breakdown(config, train_median_s: float, *, num_warmup: int, num_timed: int,
                      compare_steps: bool = False) -> dict:
  """Gaze model: each Hungarian matcher alone, jitted on the train step's [B, S, T] cost
  shape and device-synchronised (so the host callback's round trip is included), as a
  fraction of the train step's median time. compare_steps: also build and time the whole
  train step with each matcher (their difference bounds the matcher's cost in place)."""
  from dermjax.models.gaze import matchers  # Gaze-only.

  out = {}
  b, t = int(config.data.batch_size), int(config.model.timesteps)
  rng = np.random.default_rng(0)
  cost = jnp.asarray(rng.random((b, schema.NUM_STRUCTURES, t)), jnp.float32)
  valid = jnp.asarray(rng.random((b, schema.NUM_STRUCTURES)) < 0.7)
  for method in matchers.METHODS:
    match = jax.jit(lambda c_, v_, m=method: matchers.match(c_, v_, m))
    _, times = profiling.time_steps(lambda _: match(cost, valid), None, num_warmup=3,
                                    num_timed=50)
    alone = float(np.median(times))
    out[method] = {"alone_median_s": alone, "fraction_of_train_step": alone / train_median_s}
    if compare_steps:
      c = config.copy_and_resolve_references()
      c.loss.matcher = method
      built = build_steps(c)
      compiled, _ = compile_step(built["train_step"], built["state"], built["batch"])
      _, step_times = _time_train(compiled, built["state"], built["batch"], num_warmup, num_timed)
      out[method]["train_step_median_s"] = float(np.median(step_times))
  return out


def profile(config, *, num_warmup: int = 2, num_timed: int = 5, eval_step: bool = True,
            matmul_peak: bool = True, matmul_peak_n: int = 2048, trace_dir: str | None = None,
            with_matcher_breakdown: bool = False, compare_matcher_steps: bool = False) -> dict:
  """Profiles `config`'s train (and eval) step; returns the results dict (see module doc)."""
  steps = build_steps(config)
  batch_size = int(config.data.batch_size)
  result = {
      "model": config.model.name,
      "image_size": int(config.data.image_size),
      "batch_size": batch_size,
      "eval_batch_size": int(config.data.eval_batch_size),
      "dtype": str(config.model.dtype),
      "machine": profiling.machine_info(),
      "xla_cpu_conv": xla_cpu.current(),
      "load_average_before": list(os.getloadavg()),
  }
  if "timesteps" in config.model:
    result["timesteps"] = int(config.model.timesteps)
  if "padding" in config.model:
    result["padding"] = str(config.model.padding)
    result["decoder_chunk"] = int(config.model.get("decoder_chunk", 0) or 0)
    result["memory_remat"] = bool(config.model.get("memory_remat", True))
  state = steps["state"]
  result["num_params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
  result["num_trainable_params"] = int(sum(
      x.size for x, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(steps["mask"])) if m))

  train_compiled, result["train_compile"] = compile_step(steps["train_step"], state, steps["batch"])
  train_flops = profiling.compiled_flops(train_compiled)
  result["train_xla_memory"] = profiling.compiled_memory(train_compiled)
  eval_compiled = eval_flops = None
  if eval_step:
    eval_compiled, result["eval_compile"] = compile_step(steps["eval_step"], state,
                                                         steps["eval_batch"])
    eval_flops = profiling.compiled_flops(eval_compiled)
  peak = profiling.matmul_peak_jax(config.model.dtype, n=matmul_peak_n) if matmul_peak else None
  result["matmul_peak_tflops"] = peak / 1e12 if peak else None
  result["train_flops_per_image_xla"] = train_flops / batch_size if train_flops else None
  result["train_flops_source"] = "xla cost analysis"
  if config.model.name == "gaze" and config.model.head == "gap":
    # XLA counts the scanned ConvLSTM's loop body once; the analytic count is exact.
    analytic = gaze_flops.gaze_train_flops(
        config.data.image_size, config.model.timesteps,
        freeze_encoder=bool(config.model.freeze_encoder), decoder=bool(config.model.decoder))
    train_flops = analytic * batch_size
    result["train_flops_source"] = "analytic (dermjax.gaze_flops.gaze_train_flops)"
  result["train_flops_per_image"] = train_flops / batch_size if train_flops else None

  if num_timed > 0:
    if eval_compiled is not None:  # Before training: the train step donates `state`.
      times = _time_eval(eval_compiled, state, steps["eval_batch"], num_warmup, num_timed)
      result["eval"] = profiling.summarize(times, batch_size=int(config.data.eval_batch_size),
                                           flops_per_step=eval_flops, peak_flops=peak)
    state, times = _time_train(train_compiled, state, steps["batch"], num_warmup, num_timed)
    result["train"] = profiling.summarize(times, batch_size=batch_size, flops_per_step=train_flops,
                                          peak_flops=peak)
    result["train"]["times_s"] = times
    if trace_dir:
      with jax.profiler.trace(trace_dir):
        state, _ = _time_train(train_compiled, state, steps["batch"], 0, 2)
      result["trace_dir"] = trace_dir
      result["trace_top_ops"] = profiling.trace_op_summary(trace_dir, num_steps=2)
  result["memory"] = profiling.peak_memory()
  result["load_average_after"] = list(os.getloadavg())
  if with_matcher_breakdown:
    if config.model.name != "gaze" or not config.model.get("decoder", True):
      raise ValueError("--matcher_breakdown needs a gaze config with a decoder")
    if "train" not in result:
      raise ValueError("--matcher_breakdown needs a timed train step (--num_timed > 0)")
    result["matcher"] = matcher_breakdown(config, result["train"]["median_s"],
                                          num_warmup=num_warmup, num_timed=num_timed,
                                          compare_steps=compare_matcher_steps)
  return result


def summary_rows(result: dict):
  """(name, value) rows of the headline numbers."""
  rows = [("model", result["model"]), ("device", result["machine"]["device_kind"]),
          ("image size / batch", f"{result['image_size']} / {result['batch_size']}"),
          ("dtype", result["dtype"])]
  if "timesteps" in result:
    rows.append(("timesteps T", result["timesteps"]))
  c = result["train_compile"]
  rows += [("train trace+lower (s)", c["trace_lower_s"]), ("train compile (s)", c["compile_s"])]
  if result.get("train_flops_per_image"):
    rows.append(("train GFLOP/image", result["train_flops_per_image"] / 1e9))
  divisor = ""
  if result.get("matmul_peak_tflops"):
    rows.append(("matmul peak TFLOP/s", result["matmul_peak_tflops"]))
    divisor = f" (of the {result['dtype']} x {result['dtype']} -> float32 matmul peak above)"
  for name in ("train", "eval"):
    if name in result:
      r = result[name]
      rows += [(f"{name} step median (s)", r["median_s"]), (f"{name} images/s", r["images_per_s"])]
      if "mfu" in r:
        rows.append((f"{name} MFU{divisor}", r["mfu"]))
  mem = result["memory"]
  if "device_peak_bytes" in mem:
    rows.append(("device peak memory (GiB)", mem["device_peak_bytes"] / 2**30))
  rows.append(("process peak RSS (GiB)", mem["process_peak_rss_bytes"] / 2**30))
  for method, m in result.get("matcher", {}).items():
    rows.append((f"matcher {method} alone (% of step)",
                 f"{m['alone_median_s'] * 1e3:.3f} ms ({100 * m['fraction_of_train_step']:.4f}%)"))
    if "train_step_median_s" in m:
      rows.append((f"train step with {method} matcher (s)", m["train_step_median_s"]))
  return rows


def _define_flags():
  """absl flags, defined only when run as a script (tests call `profile` directly)."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_integer("num_warmup", 2, "Untimed steps before timing (after compilation).")
  flags.DEFINE_integer("num_timed", 5, "Timed steps (median reported); 0: compile only.")
  flags.DEFINE_bool("eval", True, "Also compile and time the eval step.")
  flags.DEFINE_bool("matmul_peak", True, "Measure the device's matmul peak (for the MFU).")
  flags.DEFINE_integer("matmul_peak_n", 2048, "Size n of the [n, n] @ [n, n] peak products.")
  flags.DEFINE_bool("matcher_breakdown", False, "Gaze: time the host and device Hungarian "
                    "matchers alone, as a fraction of the train step.")
  flags.DEFINE_bool("compare_matcher_steps", False, "With --matcher_breakdown: also time the "
                    "whole train step with each matcher.")
  flags.DEFINE_string("xla_dump_to", None, "Write XLA's HLO dumps (text) of the train and "
                      "eval steps here.")
  flags.DEFINE_string("trace_dir", None, "Write a jax.profiler trace (TensorBoard) here.")
  flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
  flags.DEFINE_integer("decoder_chunk", None, "Gaze: set config.model.decoder_chunk (the "
                       "memory mode) even where the config table has no such field.")
  flags.DEFINE_bool("memory_remat", None, "Gaze: set config.model.memory_remat (False: the "
                    "memory mode's chunks without recomputation) even where the table has "
                    "no such field.")
  flags.mark_flags_as_required(["config"])


def main(argv):
  from absl import flags

  if len(argv) > 1:
    raise ValueError(f"scripts/profile_step.py: unexpected arguments {argv[1:]}")
  FLAGS = flags.FLAGS
  xla_cpu.apply(FLAGS.config.train.get("xla_cpu_conv"))  # Before JAX starts its backend.
  if FLAGS.xla_dump_to:  # Read by XLA when the backend starts (nothing has touched it yet).
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS"), f"--xla_dump_to={FLAGS.xla_dump_to}",
        "--xla_dump_hlo_as_text", "--xla_dump_hlo_module_re=(train|eval)_step"]))
  config = FLAGS.config
  gaze_fields = {"decoder_chunk": FLAGS.decoder_chunk, "memory_remat": FLAGS.memory_remat}
  if any(v is not None for v in gaze_fields.values()):
    config = config.copy_and_resolve_references()
    with config.unlocked():
      for name, value in gaze_fields.items():
        if value is not None:
          config.model[name] = value
  result = profile(config, num_warmup=FLAGS.num_warmup, num_timed=FLAGS.num_timed,
                   eval_step=FLAGS.eval, matmul_peak=FLAGS.matmul_peak,
                   matmul_peak_n=FLAGS.matmul_peak_n, trace_dir=FLAGS.trace_dir,
                   with_matcher_breakdown=FLAGS.matcher_breakdown,
                   compare_matcher_steps=FLAGS.compare_matcher_steps)
  if FLAGS.xla_dump_to:
    result["xla_dump_to"] = FLAGS.xla_dump_to
  print(profiling.format_table(summary_rows(result)))
  text = json.dumps(result, indent=1)
  print(text)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
