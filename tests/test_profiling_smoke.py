"""scripts/profile_step.py and scripts/benchmark_torch.py at tiny sizes; the PyTorch peer has the
flax gaze model's widths; bf16 compute stays close to fp32; profiling helpers."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import batches
from dermjax import profiling
from dermjax.data import schema
from dermjax.models import gaze
from dermjax.models.gaze import flops as gaze_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=32, batch_size=2, timesteps=2)
PRESENCE = {"splits": {"train": {"structure_presence": dict(zip(
    schema.STRUCTURES, (2000, 2000, 1131, 126, 573, 116)))}}}


def load(path, name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def gaze_config(arg="thesis,paper", **overrides):
  config = load("configs/gaze.py", "configs_gaze").get_config(arg)
  config.data.image_size = overrides.get("image_size", config.data.image_size)
  config.data.batch_size = config.data.eval_batch_size = overrides.get(
      "batch_size", config.data.batch_size)
  config.model.timesteps = overrides.get("timesteps", config.model.timesteps)
  return config


@pytest.fixture(scope="module")
def bench_torch():
  pytest.importorskip("torch")
  return load("scripts/benchmark_torch.py", "benchmark_torch")


def test_time_steps_and_summary():
  calls = []
  carry, times = profiling.time_steps(lambda c: calls.append(c) or c + 1, 0, num_warmup=2,
                                      num_timed=3, sync=lambda c: c)
  assert carry == 5 and calls == [0, 1, 2, 3, 4] and len(times) == 3
  s = profiling.summarize([1.0, 3.0, 2.0], batch_size=4, flops_per_step=8e12, peak_flops=8e12)
  assert s["median_s"] == 2.0 and s["images_per_s"] == 2.0
  assert s["flops_per_image"] == 2e12 and s["achieved_tflops"] == 4.0 and s["mfu"] == 0.5
  with pytest.raises(ValueError, match="num_timed"):
    profiling.time_steps(lambda c: c, 0, num_warmup=0, num_timed=0)


def test_compiled_flops_counts_a_matmul():
  compiled = jax.jit(jnp.dot).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
  assert profiling.compiled_flops(compiled) == pytest.approx(2 * 64 * 32 * 16, rel=0.01)
  assert profiling.compiled_memory(compiled)["output_size_in_bytes"] == 64 * 16 * 4


def test_matmul_peaks_are_positive(bench_torch):
  del bench_torch
  for dtype in ("float32", "bfloat16"):
    jax_peak = profiling.matmul_peak_jax(dtype, n=256, num_warmup=1, num_timed=2)
    torch_peak = profiling.matmul_peak_torch(dtype, n=256, num_warmup=1, num_timed=2)
    assert 1e8 < jax_peak < 1e16 and 1e8 < torch_peak < 1e16
  with pytest.raises(ValueError, match="dtype"):
    profiling.matmul_peak_jax("int8", n=8)


def test_profile_script_tiny_gaze():
  """The real gaze train step at 32 px, timed; FLOPs from the analytic count."""
  script = load("scripts/profile_step.py", "profile_script")
  config = gaze_config(**TINY)
  result = script.profile(config, num_warmup=1, num_timed=2, eval_step=False, matmul_peak=False,
                          with_matcher_breakdown=True)
  train = result["train"]
  for method in ("host", "device"):
    assert 0 < result["matcher"][method]["fraction_of_train_step"] < 1
  assert train["steps_timed"] == 2 and train["images_per_s"] > 0
  assert result["train_compile"]["compile_s"] > 0
  assert result["memory"]["process_peak_rss_bytes"] > 0
  assert result["train_flops_per_image"] == gaze_flops.gaze_train_flops(
      TINY["image_size"], TINY["timesteps"])
  assert result["num_trainable_params"] < result["num_params"]  # Frozen encoder.
  rows = dict(script.summary_rows(result))
  assert rows["model"] == "gaze" and rows["timesteps T"] == TINY["timesteps"]


def test_analytic_gaze_flops_match_xla_at_one_step():
  """dermjax.gaze_flops.gaze_train_flops (the count both scripts' MFUs use) against XLA's cost
  analysis of the real train step. With T = 1 XLA sees every FLOP run (it counts a loop body
  once), but it also folds away the convolutions of the zero initial state, U_a * H_0 and
  U * H_0, forward and backward, which the analytic count (made for T > 1) includes.
  The step also updates the optimizer state and selects the whole state (the divergence
  guard): elementwise work per parameter, the same for any batch (~7.5% of the step at
  32 px, batch 2). So XLA's FLOPs per image are taken as the difference between the steps
  at batch 4 and batch 2, divided by 2, which cancels that per-step part."""
  script = load("scripts/profile_step.py", "profile_script")
  size = 32

  def xla_flops(batch_size):
    config = gaze_config(image_size=size, batch_size=batch_size, timesteps=1)
    steps = script.build_steps(config)
    lowered = steps["train_step"].lower(steps["state"], steps["batch"])
    return profiling.compiled_flops(lowered.compile())

  per_image = (xla_flops(4) - xla_flops(2)) / 2
  h = size // 8
  zero_state = 3 * 2.0 * h * h * 9 * (256 * 256 + 256 * 1024)
  analytic = gaze_flops.gaze_train_flops(size, 1) - zero_state
  assert per_image == pytest.approx(analytic, rel=0.05)


def test_synthetic_batch_matches_input_pipeline():
  script = load("scripts/profile_step.py", "profile_script")
  config = gaze_config(**TINY)
  batch = script.synthetic_host_batch(config, 3)
  assert batch["image"].shape == (3, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["masks"].shape == (3, 32, 32, 1 + schema.NUM_ATTRIBUTES)
  assert set(np.unique(batch["masks"])) <= {0, 1} and batch["masks"][..., 0].any(axis=(1, 2)).all()


def test_benchmark_torch_tiny(bench_torch):
  args = bench_torch.parse_args([
      f"--image_size={TINY['image_size']}", f"--batch_size={TINY['batch_size']}",
      f"--num_steps={TINY['timesteps']}", "--num_warmup=1", "--num_timed=2", "--no-matmul_peak",
      "--device=cpu"])
  result = bench_torch.run(args)
  step = result["train_step"]
  assert step["steps_timed"] == 2 and step["images_per_s"] > 0 and "mfu" not in step
  assert result["machine"]["torch"].startswith("2.")


def test_torch_peer_has_the_flax_widths(bench_torch):
  """Same parameter count per submodule as the flax gaze model (configs/gaze.py thesis)."""
  import torch

  t = 5
  config = gaze_config("thesis,paper", image_size=64, timesteps=t)
  shapes = {"image": jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
            "masks": jax.ShapeDtypeStruct((1, 64, 64, 1 + schema.NUM_ATTRIBUTES), jnp.float32),
            "has_lesion_mask": jax.ShapeDtypeStruct((1,), jnp.float32),
            "has_attributes": jax.ShapeDtypeStruct((1,), jnp.float32)}
  variables = jax.eval_shape(
      lambda b: gaze.build(config).init({"params": jax.random.PRNGKey(0),
                                         "dropout": jax.random.PRNGKey(1)}, b), shapes)
  flax_counts = {name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
                 for name, tree in variables["params"].items()}
  model = bench_torch.GazeModel(t)

  def count(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())

  assert count(model.encoder) == flax_counts["encoder"]
  assert count(model.lstm) == flax_counts["attentive_convlstm"]
  assert count(model.decoder) == flax_counts["decoder"]
  assert count(model.structure_head) == flax_counts["structure_head"]
  assert count(model.diagnosis) == flax_counts["diagnosis_vgg"] + flax_counts["diagnosis_head"]
  assert sum(p.numel() for p in model.parameters() if p.requires_grad) == (
      sum(flax_counts.values()) - flax_counts["encoder"])
  # The batched decoder pass computes what the per-step passes compute (eval-mode BN).
  model.eval()
  image = torch.randn(2, 3, 32, 32)
  with torch.no_grad():
    per_step = model(image)
    model.batched_decoder = True
    batched = model(image)
  for key in ("masks", "structure_logits", "logits"):
    torch.testing.assert_close(batched[key], per_step[key], rtol=1e-4, atol=1e-5)


def test_bfloat16_stays_close_to_float32():
  """config.model.dtype = "bfloat16": params, gradients and loss-facing outputs stay float32;
  the outputs, loss and gradient direction stay within bounds of the float32 model."""
  config = gaze_config(**TINY)
  config.loss.matcher = "device"
  bf16 = config.copy_and_resolve_references()
  bf16.model.dtype = "bfloat16"
  size = TINY["image_size"]
  rng = np.random.default_rng(0)
  masks = np.zeros((2, size, size, 1 + schema.NUM_ATTRIBUTES), np.float32)
  masks[:, 8:24, 8:24, 0] = 1
  masks[0, 8:16, 8:16, 1] = 1
  masks[1, 16:24, 8:16, 4] = 1
  batch = batches.model_batch(2, size, image=rng.normal(size=(2, size, size, 3)), masks=masks,
                              label=[0, 1], melanoma=[0, 1])
  module32, module16 = gaze.build(config), gaze.build(bf16)
  variables = module32.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                            batch)
  stats = gaze.loss_stats(PRESENCE, config)

  def loss_fn(params, module, cfg):
    out, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, batch,
                          train=True, mutable=["batch_stats"])
    return gaze.loss(out, batch, cfg, stats)[0], out

  (l32, o32), g32 = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, module32, config),
                                               has_aux=True))(variables["params"])
  (l16, o16), g16 = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, module16, bf16),
                                               has_aux=True))(variables["params"])
  assert {x.dtype for x in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}
  for key in ("logits", "masks", "structure_logits"):
    assert o16[key].dtype == jnp.float32, key
  mask_diff = float(jnp.max(jnp.abs(o16["masks"] - o32["masks"])))
  assert 1e-5 < mask_diff < 0.1  # Really computed in bf16, and close.
  s32, s16 = np.asarray(o32["structure_logits"]), np.asarray(o16["structure_logits"])
  assert np.max(np.abs(s16 - s32)) < 0.05 * np.max(np.abs(s32)) + 1e-3
  assert abs(float(l16) - float(l32)) < 0.01 * abs(float(l32))
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16)])
  assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.95


# The load-proof benchmark method (dermjax.profiling's quiet gate, scripts/benchmark_gaze_cpu.py,
# scripts/benchmark_conv_ceiling.py).

def _snapshot(t, busy, own, load=0.1, steal=0.0):
  return {"time": t, "busy_s": busy, "steal_s": steal, "own_s": own, "load_1min": load}


def test_cpu_usage_separates_own_and_foreign_cpu():
  usage = profiling.cpu_usage(_snapshot(0, 100, 10, load=0.5), _snapshot(10, 125, 25, load=1.7))
  assert usage["own_cores"] == 1.5 and usage["foreign_cores"] == 1.0
  assert usage["load_1min_before"] == 0.5 and usage["load_1min_after"] == 1.7
  real = profiling.cpu_usage(profiling.cpu_snapshot(), profiling.cpu_snapshot())
  assert real["foreign_cores"] >= 0 and real["wall_s"] > 0


def test_run_is_valid_only_when_quiet_before_and_during():
  quiet = {"quiet": True, "load_1min": 0.4}
  calm, busy = {"foreign_cores": 0.05}, {"foreign_cores": 0.9}
  assert profiling.run_is_valid(quiet, calm, max_load=1.0, max_foreign=0.3) == (True, "quiet")
  ok, why = profiling.run_is_valid({"quiet": False, "load_1min": 5.2}, calm, max_load=1.0,
                                   max_foreign=0.3)
  assert not ok and "5.20 >= 1.0" in why
  ok, why = profiling.run_is_valid(quiet, busy, max_load=1.0, max_foreign=0.3)
  assert not ok and "0.90 cores" in why


def test_wait_until_quiet_gives_up_after_its_timeout():
  logs = []
  state = profiling.wait_until_quiet(-1.0, timeout_s=0, sample_s=0.01, log=logs.append)
  assert state["quiet"] is False and "not quiet" in logs[-1]
  assert profiling.wait_until_quiet(1e9, max_foreign=1e9, sample_s=0.01)["quiet"] is True


def test_exclusive_lock_waits_for_other_holders(tmp_path):
  import fcntl

  path = str(tmp_path / "lock")
  with open(path, "w") as other:
    fcntl.flock(other, fcntl.LOCK_SH)  # Another job's shared hold.
    with pytest.raises(TimeoutError, match="held by others"):
      with profiling.exclusive_lock(path, timeout_s=0.05, log=lambda _: None):
        pass
  with profiling.exclusive_lock(path, timeout_s=1):
    pass


def _quiet_args(**kw):
  import argparse

  parser = argparse.ArgumentParser()
  profiling.add_quiet_machine_args(parser)
  args = parser.parse_args([])
  for k, v in kw.items():
    setattr(args, k, v)
  return args


def test_measured_run_reads_the_result_and_refuses_a_loud_machine(tmp_path):
  import sys

  out = str(tmp_path / "r.json")
  cmd = [sys.executable, "-c", f"import json; json.dump({{'x': 1}}, open({out!r}, 'w'))"]
  run = profiling.measured_run(cmd, out, _quiet_args(max_load=1e9, max_foreign=1e9,
                                                     quiet_sample_s=0.05), meta={"round": 0})
  assert run["valid"] and run["result"] == {"x": 1} and run["round"] == 0
  assert run["usage"]["own_cores"] >= 0 and not os.path.exists(out)
  loud = _quiet_args(max_load=-1.0, quiet_timeout_s=0, quiet_sample_s=0.05)
  run = profiling.measured_run(cmd, out, loud)
  assert not run["valid"] and run["rc"] is None and "no quiet window" in run["reason"]


def test_gaze_benchmark_never_reports_a_ratio_from_a_loud_run():
  """The 2026-11-30 ratios came from runs at load 5-10; such a run now enters no ratio."""
  script = load("scripts/benchmark_gaze_cpu.py", "benchmark_gaze_cpu")
  torch_result = {"train_step": {"median_s": 2.0, "images_per_s": 2.0}, "times_s": [2.0]}
  jax_result = {"train": {"median_s": 5.6, "images_per_s": 0.71, "times_s": [5.6]},
                "train_compile": {"compile_s": 30.0}, "train_xla_memory": {},
                "memory": {"process_peak_rss_bytes": 1}}
  usage = {"load_1min_before": 0.3, "foreign_cores": 0.0}
  runs = [{"variant": "torch", "valid": True, "result": torch_result, "usage": usage},
          {"variant": "jax:reflect:ynnpack:1", "valid": True, "result": jax_result,
           "usage": usage}]
  rows = script.round_rows(runs)
  assert rows["jax:reflect:ynnpack:1"]["ratio_to_torch_eager"] == pytest.approx(0.355)
  runs[0] = {**runs[0], "valid": False}
  assert "ratio_to_torch_eager" not in script.round_rows(runs)["jax:reflect:ynnpack:1"]
  summary = script.ratio_summary([rows, rows])
  assert summary["jax:reflect:ynnpack:1"]["ratio_to_torch_eager_median"] == pytest.approx(0.355)
  with pytest.raises(SystemExit):
    script.parse_args(["--rounds=1", "--json_out=x"])  # At least 2 interleaved rounds.


def test_conv_ceiling_shapes_add_up_to_the_analytic_flops():
  script = load("scripts/benchmark_conv_ceiling.py", "benchmark_conv_ceiling")
  for size, batch in ((112, 4), (224, 8)):
    shapes = script.gaze_conv_shapes(size, batch, 5)
    assert len(shapes) == 15 and len({s["name"] for s in shapes}) == 15
    total = sum(script.conv_flops(s) * (s["fwd"] + s["dx"] + s["dw"]) for s in shapes) / batch
    # The analytic count also has W_a's input gradient (not run: stop_gradient) and the
    # structure head's dense layers.
    h = size // 8
    extra = 2.0 * h * h * 256 * 256 * 9 + 3 * 5 * 2.0 * (448 * 224 + 224 * 6)
    assert total + extra == pytest.approx(gaze_flops.gaze_train_flops(size, 5), rel=1e-9)


def test_conv_ceiling_workers_and_summary(bench_torch):
  """Both workers time every pass of a tiny shape set; the ceiling ignores invalid runs."""
  del bench_torch
  script = load("scripts/benchmark_conv_ceiling.py", "benchmark_conv_ceiling")
  shapes = script.gaze_conv_shapes(16, 1, 2)[:3]
  results = {impl: script.worker(impl, shapes, dtype="float32", threads=0, min_time_s=0.0)
             for impl in ("jax:ynnpack", "jax:ynnpack:patches", "torch")}
  for result in results.values():
    for s in shapes:
      assert set(result["shapes"][s["name"]]) == {p for p in script.PASSES if s[p]}
  runs = [{"round": 0, "impl": i, "valid": True, "result": r} for i, r in results.items()]
  summary = script.ceiling_summary(runs, shapes)
  ceiling = summary["rounds"][0]["ceiling"]
  assert set(ceiling) == {"jax:ynnpack", "jax:ynnpack:patches", "best_jax"}
  assert ceiling["best_jax"] >= max(ceiling["jax:ynnpack"], ceiling["jax:ynnpack:patches"])
  runs[-1]["valid"] = False  # torch's run was loud: no ceiling at all.
  assert script.ceiling_summary(runs, shapes)["ceiling_median"] == {}
  with pytest.raises(ValueError, match="impls"):
    script.check_impl("jax:onednn")
