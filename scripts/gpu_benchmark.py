"""The accelerator run, ready to go: every GPU number BENCHMARKS.md asks for, as raw JSON.

  python scripts/gpu_benchmark.py --out_dir=benchmarks/gpu_<date> [--budget_s=450] [--only=a,b]
  python scripts/gpu_benchmark.py --out_dir=/tmp/smoke --smoke      # CPU check, tiny sizes

Two phases. First every JAX job's program is compiled, --compile_workers processes at a
time, into a persistent compilation cache under DIR/jax_cache (compiling is host work: the
GPU idles, and on a 16-core host 8 compiles run side by side); their JSON, with the real
compile times, is DIR/<job>.compile.json. Then the jobs run one at a time in priority
order, each its own process with its own timeout, loading their programs from the cache;
a job that could not finish within --budget_s (default 450 s, so the run takes under 8
minutes) is recorded as skipped. Each writes DIR/<job>.json (its raw result) and
DIR/<job>.log; DIR/summary.json has the machine, every job's rc, wall time and headline
numbers, and the targets of issue #24. Jobs:
  gaze_jax_{fp32,bf16}_{memory,batched}  scripts/profile_step.py on configs/gaze.py:thesis,
      paper (224 px, batch 8, T 5), memory mode (decoder_chunk 1) and the batched decoder;
      each measures the matmul peak of the device in its dtype (bf16 x bf16 -> f32 for the
      bf16 rows: the MFU divisor); gaze_jax_bf16_memory (host Hungarian matcher, the
      config's) also times each matcher alone and writes an XLA dump (DIR/xla_dump) and a
      jax.profiler trace of two train steps (DIR/trace, for TensorBoard / Perfetto) with
      its most expensive ops in the JSON
  gaze_jax_bf16_memory_device_matcher  the same step with the device (optax) matcher
  gaze_torch_fp32 / gaze_torch_amp  scripts/benchmark_torch.py eager fp32; bf16 autocast
      eager, then torch.compile (inductor) in the same process, with torch's bf16 peak
  <table>_paper  one train step of each other table's paper row (attnmel, cin, masll,
      zoome) through scripts/profile_step.py, fp32
--smoke runs the gaze code paths at 32 px, batch 2, T 2 on any device (the bf16 memory
job with both phases, dump, trace, matchers and a small peak; the torch jobs without
torch.compile), without timeouts, and only checks that the other rows' configs load (their
full-depth backbones take minutes to compile on a CPU); tests/test_gpu_benchmark.py runs it.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from dermjax import config_lib
from dermjax import fileio
from dermjax import profiling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAZE = os.path.join(REPO, "configs", "gaze.py") + ":thesis,paper"
OTHER_TABLES = {  # job -> config row at the paper's scale (each table's headline model).
    "attnmel_paper": "attnmel.py:attnmel,isic2017,paper",
    "cin_paper": "cin.py:cin,paper",
    "masll_paper": "masll.py:masll_densenet121,paper",
    "zoome_paper": "zoome.py:zoome,paper",
}
SMOKE_GAZE = ["--config.data.image_size=32", "--config.data.batch_size=2",
              "--config.data.eval_batch_size=2", "--config.model.timesteps=2"]
SMOKE_TORCH = ["--image_size=32", "--batch_size=2", "--num_steps=2"]


def _profile(config, *extra):
  return [os.path.join(REPO, "scripts", "profile_step.py"), f"--config={config}", *extra]


def _torch(*extra):
  return [os.path.join(REPO, "scripts", "benchmark_torch.py"), *extra]


def jobs(out_dir: str, smoke: bool) -> list[dict]:
  """[{"name", "argv", "warm_argv", "timeout_s", "kind", "smoke"}] in priority order. argv
  runs with this Python; its last flag, the job's JSON, is added by run_job. warm_argv (JAX
  jobs): the same program compiled only, for the parallel cache-warming phase. smoke:
  whether --smoke runs it (the others are only checked to load)."""
  timing = (["--num_warmup=0", "--num_timed=1"] if smoke else ["--num_warmup=2", "--num_timed=5"])
  gaze_size = SMOKE_GAZE if smoke else []
  peak = ["--matmul_peak_n=128"] if smoke else []
  out = []

  def jax_job(name, config, program, extra=(), *, timeout_s=90, in_smoke=False):
    out.append({"name": name, "kind": "jax", "smoke": in_smoke, "timeout_s": timeout_s,
                "argv": _profile(config, "--noeval", *program, *extra),
                "warm_argv": _profile(config, "--noeval", "--nomatmul_peak", "--num_timed=0",
                                      *program)})

  for dtype in ("fp32", "bf16"):
    for mode, chunk in (("memory", 1), ("batched", 0)):
      name = f"gaze_jax_{dtype}_{mode}"
      program = [f"--decoder_chunk={chunk}", *gaze_size]
      if dtype == "bf16":
        program.append("--config.model.dtype=bfloat16")
      extra = [*timing, *peak]
      if name == "gaze_jax_bf16_memory":  # The headline row: dump, trace, matchers alone.
        extra += [f"--xla_dump_to={os.path.join(out_dir, 'xla_dump')}",
                  f"--trace_dir={os.path.join(out_dir, 'trace')}", "--matcher_breakdown"]
      jax_job(name, GAZE, program, extra, in_smoke=name == "gaze_jax_bf16_memory")
  # The whole step with the device (optax) matcher; gaze_jax_bf16_memory has the host one.
  jax_job("gaze_jax_bf16_memory_device_matcher", GAZE,
          ["--decoder_chunk=1", "--config.model.dtype=bfloat16", "--config.loss.matcher=device",
           *gaze_size], ["--nomatmul_peak", *timing])
  torch_timing = ["--num_warmup=1", "--num_timed=1"] if smoke else ["--num_warmup=2",
                                                                  "--num_timed=5"]
  torch_size = SMOKE_TORCH if smoke else []
  out.append({"name": "gaze_torch_fp32", "kind": "torch", "smoke": True, "timeout_s": 60,
              "argv": _torch("--dtype=float32", "--compile=off", *torch_timing, *torch_size,
                             *peak)})
  out.append({"name": "gaze_torch_amp", "kind": "torch", "smoke": True, "timeout_s": 240,
              "argv": _torch("--dtype=bfloat16", "--compile=" + ("off" if smoke else "both"),
                             *torch_timing, *torch_size, *peak)})
  for name, row in OTHER_TABLES.items():
    jax_job(name, os.path.join(REPO, "configs", row), [], ["--nomatmul_peak", "--num_warmup=1",
                                                           "--num_timed=1"])
  return out


def warm_compilation_cache(todo: list[dict], out_dir: str, env: dict, *, workers: int,
                           timeout_s: float) -> dict:
  """Compiles every JAX job's program (warm_argv) into the persistent compilation cache of
  `env`, `workers` processes at a time (compilation is host work; the GPU is idle), so the
  timed phase loads instead of compiling. {job: {"rc", "wall_s"}}; their JSON (with the real
  compile times) goes to DIR/<job>.compile.json."""
  env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # Several processes share the GPU.
  pending = [j for j in todo if "warm_argv" in j]
  running, out = [], {}
  while pending or running:
    while pending and len(running) < workers:
      job = pending.pop(0)
      path = os.path.join(out_dir, job["name"] + ".compile")
      log = open(path + ".log", "w")
      cmd = [sys.executable, *job["warm_argv"], f"--json_out={path}.json"]
      running.append((job, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT),
                      time.time(), log))
    time.sleep(0.2)
    for entry in list(running):
      job, proc, start, log = entry
      if proc.poll() is None and (not timeout_s or time.time() - start < timeout_s):
        continue
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.close()
      out[job["name"]] = {"rc": proc.returncode, "wall_s": time.time() - start}
      running.remove(entry)
  return out


def check_configs() -> dict:
  """{job: "ok" | error} for the other tables' paper rows: each config loads and names a model."""
  out = {}
  for name, row in OTHER_TABLES.items():
    path, arg = row.split(":")
    try:
      config = config_lib.load_config(os.path.join(REPO, "configs", path), arg)
      out[name] = "ok" if config.model.name else "no model name"
    except Exception as e:  # Any failure to load is the finding.
      out[name] = f"{type(e).__name__}: {e}"
  return out


def run_job(job: dict, out_dir: str, env: dict) -> dict:
  """Runs one job with its timeout; {"name", "rc", "wall_s", "result" (its JSON) | "error"}."""
  json_path = os.path.join(out_dir, job["name"] + ".json")
  cmd = [sys.executable, *job["argv"], f"--json_out={json_path}"]
  start = time.time()
  row = {"name": job["name"], "command": " ".join(cmd[1:]),
         "utc": time.strftime("%H:%M:%S", time.gmtime(start))}
  with open(os.path.join(out_dir, job["name"] + ".log"), "w") as log:
    try:
      proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=job["timeout_s"] or None)
      row["rc"] = proc.returncode
    except subprocess.TimeoutExpired:
      row["rc"], row["error"] = None, f"timed out after {job['timeout_s']} s"
  row["wall_s"] = time.time() - start
  if row["rc"] == 0 and os.path.exists(json_path):
    with open(json_path) as f:
      row["result"] = json.load(f)
  elif "error" not in row:
    row["error"] = f"exit {row['rc']}: see {job['name']}.log"
  return row


def headline(kind: str, result: dict) -> dict:
  """The numbers summary.json keeps of one job's raw result."""
  if kind == "torch":
    out = {"eager": result["train_step"], "peak_tflops": result.get("matmul_peak_tflops"),
           "device": result["machine"].get("torch_device_kind", result["machine"]["cpu"])}
    if "compiled" in result:
      out["compiled"] = {**result["compiled"]["train_step"],
                         "first_step_s": result["compiled"]["first_step_s"]}
    return out
  out = {k: result.get(k) for k in ("model", "image_size", "batch_size", "dtype",
                                    "decoder_chunk", "matmul_peak_tflops", "train_compile")}
  out["train"] = {k: v for k, v in result.get("train", {}).items() if k != "times_s"}
  out["device"] = result["machine"].get("device_kind")
  if "memory" in result:
    out["memory"] = result["memory"]
  if "matcher" in result:
    out["matcher"] = result["matcher"]
  if "trace_top_ops" in result:
    out["trace_top_ops"] = result["trace_top_ops"][:10]
  return out


def targets(rows: dict) -> dict:
  """Issue #24's GPU targets from the headlines: JAX bf16 (the faster decoder mode) >= 1.5x
  PyTorch eager AMP and >= 1.0x torch.compile AMP on the gaze step (images/s)."""
  jax_bf16 = [rows[n]["train"].get("images_per_s") for n in
              ("gaze_jax_bf16_memory", "gaze_jax_bf16_batched") if n in rows]
  jax_bf16 = max((v for v in jax_bf16 if v), default=None)
  amp = rows.get("gaze_torch_amp", {})
  out = {"jax_bf16_images_per_s": jax_bf16}
  for key, peer, goal in (("eager", "vs_torch_eager_amp", 1.5),
                          ("compiled", "vs_torch_compile_amp", 1.0)):
    if jax_bf16 and key in amp:
      ratio = jax_bf16 / amp[key]["images_per_s"]
      out[peer] = {"ratio": ratio, "target": goal, "met": ratio >= goal}
  return out


def run(args) -> dict:
  os.makedirs(args.out_dir, exist_ok=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
             JAX_COMPILATION_CACHE_DIR=os.path.join(args.out_dir, "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  start = time.time()
  summary = {"smoke": args.smoke, "source": profiling.source_version(REPO),
             "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
             "machine": profiling.machine_info(), "jobs": {}, "headlines": {}}
  only = set(args.only.split(",")) if args.only else None
  todo = []
  for job in jobs(args.out_dir, args.smoke):
    if only is not None and job["name"] not in only:
      continue
    if args.smoke and not job["smoke"]:
      summary["jobs"][job["name"]] = {"skipped": "smoke", "command": " ".join(job["argv"])}
      continue
    todo.append(job)
  if args.compile_workers:
    summary["warm_compile"] = warm_compilation_cache(
        todo, args.out_dir, env, workers=args.compile_workers,
        timeout_s=0 if args.smoke else args.budget_s / 2)
    summary["warm_compile_wall_s"] = time.time() - start
  for job in todo:
    if args.smoke:
      job = {**job, "timeout_s": 0}
    elif time.time() - start + job["timeout_s"] > args.budget_s:
      summary["jobs"][job["name"]] = {"skipped": f"over the {args.budget_s} s budget"}
      continue
    row = run_job(job, args.out_dir, env)
    if "result" in row:
      summary["headlines"][job["name"]] = headline(job["kind"], row.pop("result"))
    summary["jobs"][job["name"]] = row
    print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    fileio.write_json(os.path.join(args.out_dir, "summary.json"), summary)
  if args.smoke:
    summary["config_checks"] = check_configs()
  summary["targets"] = targets(summary["headlines"])
  summary["wall_s"] = time.time() - start
  fileio.write_json(os.path.join(args.out_dir, "summary.json"), summary)
  print(json.dumps(summary["targets"], indent=1))
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--smoke", action="store_true", help="Tiny sizes; runs on a CPU.")
  parser.add_argument("--budget_s", type=float, default=450, help="Wall-clock budget, all jobs.")
  parser.add_argument("--only", default="", help="Comma-separated job names (default all).")
  parser.add_argument("--compile_workers", type=int, default=8,
                      help="Parallel processes that first compile every JAX job into the "
                      "persistent compilation cache (0: no warming phase).")
  args = parser.parse_args(argv)
  known = {j["name"] for j in jobs(args.out_dir, args.smoke)}
  unknown = set(filter(None, args.only.split(","))) - known
  if unknown:
    parser.error(f"--only: unknown jobs {sorted(unknown)}; known: {sorted(known)}")
  return run(args)


if __name__ == "__main__":
  main()
