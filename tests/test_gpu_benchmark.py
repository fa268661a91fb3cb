"""scripts/gpu_benchmark.py: the accelerator run's driver, --smoke on CPU; its targets."""

import json
import os

import pytest

from dermjax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gpu_bench():
  pytest.importorskip("torch")
  return config_lib.config_module(os.path.join(REPO, "scripts", "gpu_benchmark.py"))


def test_smoke_run_writes_every_artifact(gpu_bench, tmp_path):
  """--smoke: the JAX gaze job (bf16, memory mode, XLA dump, profiler trace, matchers, a
  measured peak) and both torch jobs run at 32 px and leave raw JSON; the jobs it skips
  are listed with their commands; the other tables' paper rows load."""
  out = tmp_path / "run"
  summary = gpu_bench.main([f"--out_dir={out}", "--smoke"])
  names = [j["name"] for j in gpu_bench.jobs(str(out), smoke=False)]
  assert set(summary["jobs"]) == set(names)
  ran = {n for n, j in summary["jobs"].items() if "skipped" not in j}
  assert ran == {"gaze_jax_bf16_memory", "gaze_torch_fp32", "gaze_torch_amp"}
  for name in ran:
    assert summary["jobs"][name]["rc"] == 0, (out / f"{name}.log").read_text()[-2000:]
    assert json.loads((out / f"{name}.json").read_text())
  jax_row = summary["headlines"]["gaze_jax_bf16_memory"]
  assert jax_row["dtype"] == "bfloat16" and jax_row["decoder_chunk"] == 1
  assert 0 < jax_row["train"]["mfu"] and jax_row["matmul_peak_tflops"] > 0
  assert set(jax_row["matcher"]) == {"host", "device"}
  assert any("train_step" in f for f in os.listdir(out / "xla_dump"))
  assert not any("init_variables" in f for f in os.listdir(out / "xla_dump"))
  assert any(files for _, _, files in os.walk(out / "trace"))
  top = jax_row["trace_top_ops"]  # dermjax.profiling.trace_op_summary of the trace.
  assert top and top[0]["ms_per_step"] > 0 and top[0]["calls_per_step"] > 0
  assert summary["headlines"]["gaze_torch_amp"]["eager"]["images_per_s"] > 0
  assert summary["config_checks"] == {n: "ok" for n in gpu_bench.OTHER_TABLES}
  assert summary["targets"]["vs_torch_eager_amp"]["ratio"] > 0
  assert json.loads((out / "summary.json").read_text())["targets"] == summary["targets"]
  # The warming phase compiled the JAX job into the persistent cache, with its compile time.
  assert list(summary["warm_compile"]) == ["gaze_jax_bf16_memory"]
  assert summary["warm_compile"]["gaze_jax_bf16_memory"]["rc"] == 0
  warm = json.loads((out / "gaze_jax_bf16_memory.compile.json").read_text())
  assert warm["train_compile"]["compile_s"] > 0 and os.listdir(out / "jax_cache")


def test_full_run_plan_fits_the_budget(gpu_bench):
  """Every job of the GPU run has a timeout, the gaze rows come first (the budget skips from
  the end), every JAX job can be compiled ahead, torch runs AMP eager and compiled."""
  jobs = gpu_bench.jobs("/tmp/x", smoke=False)
  names = [j["name"] for j in jobs]
  assert names[:4] == ["gaze_jax_fp32_memory", "gaze_jax_fp32_batched", "gaze_jax_bf16_memory",
                       "gaze_jax_bf16_batched"]
  assert {"gaze_jax_bf16_memory_device_matcher", "gaze_torch_fp32", "gaze_torch_amp"} <= set(names)
  assert all("warm_argv" in j for j in jobs if j["kind"] == "jax")
  assert all(j["timeout_s"] > 0 for j in jobs)
  amp = next(j for j in jobs if j["name"] == "gaze_torch_amp")
  assert "--compile=both" in amp["argv"] and "--dtype=bfloat16" in amp["argv"]
  with pytest.raises(SystemExit):
    gpu_bench.main(["--out_dir=/tmp/x", "--only=nope"])


def test_targets(gpu_bench):
  rows = {"gaze_jax_bf16_memory": {"train": {"images_per_s": 30.0}},
          "gaze_jax_bf16_batched": {"train": {"images_per_s": 20.0}},
          "gaze_torch_amp": {"eager": {"images_per_s": 25.0}, "compiled": {"images_per_s": 27.0}}}
  t = gpu_bench.targets(rows)
  assert t["jax_bf16_images_per_s"] == 30.0
  assert t["vs_torch_eager_amp"] == {"ratio": 1.2, "target": 1.5, "met": False}
  assert t["vs_torch_compile_amp"]["met"] is True
  assert gpu_bench.targets({}) == {"jax_bf16_images_per_s": None}
