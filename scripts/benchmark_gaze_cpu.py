"""Side-by-side gaze train-step benchmark on a shared machine: JAX variants and PyTorch
(eager and torch.compile) interleaved in one run, each in its own process.

  python scripts/benchmark_gaze_cpu.py --image_size=112 --batch_size=4 --timesteps=5 \
      --variants=jax:reflect_explicit:ynnpack,jax:reflect:ynnpack,jax:reflect:eigen,torch \
      --rounds=1 --json_out=F

A JAX variant "jax:<padding>:<conv>[:<decoder_chunk>]" runs scripts/profile_step.py on
configs/gaze.py:thesis,paper at the given size with config.model.padding, the XLA:CPU
convolution library (config.train.xla_cpu_conv) and the memory mode; "torch" runs
scripts/benchmark_torch.py --compile=both (eager, then torch.compile, same process).
Every process records the 1-min load average before and after it (other jobs share the
CPU), so each number can be read against the load it ran under; rounds repeat the whole
sequence. The JSON holds every run's raw result and the ratios to PyTorch per round.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from dermjax import fileio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lscpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    return "unknown"


def command(variant, args, json_out):
  py = sys.executable
  if variant == "torch":
    return [py, os.path.join(REPO, "scripts", "benchmark_torch.py"),
            f"--image_size={args.image_size}", f"--batch_size={args.batch_size}",
            f"--num_steps={args.timesteps}", f"--num_warmup={args.num_warmup}",
            f"--num_timed={args.num_timed}", f"--compile={args.torch_compile}",
            "--no-matmul_peak", f"--json_out={json_out}"]
  parts = variant.split(":")
  if parts[0] != "jax" or len(parts) not in (3, 4):
    raise ValueError(f"variant {variant!r}: 'torch' or 'jax:<padding>:<conv>[:<chunk>]'")
  chunk = parts[3] if len(parts) == 4 else "0"
  return [py, os.path.join(REPO, "scripts", "profile_step.py"),
          "--config=" + os.path.join(REPO, "configs", "gaze.py") + ":thesis,paper",
          f"--config.data.image_size={args.image_size}",
          f"--config.data.batch_size={args.batch_size}",
          f"--config.data.eval_batch_size={args.batch_size}",
          f"--config.model.timesteps={args.timesteps}",
          f"--config.model.padding={parts[1]}", f"--config.train.xla_cpu_conv={parts[2]}",
          f"--decoder_chunk={chunk}",
          f"--num_warmup={args.num_warmup}", f"--num_timed={args.num_timed}",
          "--noeval", "--nomatmul_peak", f"--json_out={json_out}"]


def summary(variant, result):
  """{variant: {"median_s", "images_per_s", ...}} rows of one run's result."""
  if variant == "torch":
    rows = {"torch_eager" if not result.get("compiled_model") else "torch_compile": {
        "median_s": result["train_step"]["median_s"],
        "images_per_s": result["train_step"]["images_per_s"], "times_s": result["times_s"],
        "first_step_s": result.get("first_step_s")}}
    if "compiled" in result:
      c = result["compiled"]
      rows["torch_compile"] = {"median_s": c["train_step"]["median_s"],
                               "images_per_s": c["train_step"]["images_per_s"],
                               "times_s": c["times_s"], "first_step_s": c["first_step_s"]}
    return rows
  t = result["train"]
  return {variant: {"median_s": t["median_s"], "images_per_s": t["images_per_s"],
                    "times_s": t["times_s"],
                    "compile_s": result["train_compile"]["compile_s"],
                    "temp_bytes": result["train_xla_memory"].get("temp_size_in_bytes"),
                    "peak_rss_bytes": result["memory"]["process_peak_rss_bytes"]}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=112)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--timesteps", type=int, default=5)
  parser.add_argument("--num_warmup", type=int, default=1)
  parser.add_argument("--num_timed", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--torch_compile", default="both", choices=("off", "on", "both"))
  parser.add_argument("--variants", default="jax:reflect_explicit:ynnpack,jax:reflect:ynnpack,"
                      "jax:reflect:eigen,torch")
  parser.add_argument("--json_out", default="")
  args = parser.parse_args(argv)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  record = {"args": vars(args), "lscpu_model": lscpu_model(), "cpu_count": os.cpu_count(),
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "runs": [],
            "rounds": []}
  for r in range(args.rounds):
    rows = {}
    for variant in args.variants.split(","):
      with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
      load_before = os.getloadavg()
      start = time.time()
      proc = subprocess.run(command(variant, args, out), env=env, capture_output=True, text=True)
      run = {"round": r, "variant": variant, "rc": proc.returncode, "wall_s": time.time() - start,
             "load_average_before": load_before, "load_average_after": os.getloadavg(),
             "utc": time.strftime("%H:%M:%S", time.gmtime(start))}
      if proc.returncode == 0:
        with open(out) as f:
          run["result"] = json.load(f)
        for name, row in summary(variant, run["result"]).items():
          rows[name] = {**row, "load_average_before": load_before[0],
                        "load_average_after": run["load_average_after"][0]}
      else:
        run["stderr_tail"] = proc.stderr[-3000:]
      os.unlink(out)
      record["runs"].append(run)
      print(json.dumps({k: v for k, v in run.items() if k != "result"}), flush=True)
    for base in ("torch_eager", "torch_compile"):
      if base in rows:
        for name, row in rows.items():
          if name.startswith("jax"):
            row[f"ratio_to_{base}"] = row["images_per_s"] / rows[base]["images_per_s"]
    record["rounds"].append(rows)
    print(json.dumps(rows, indent=1), flush=True)
  record["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
  if args.json_out:
    fileio.write_json(args.json_out, record)
  return record


if __name__ == "__main__":
  main()
