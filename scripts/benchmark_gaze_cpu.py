"""The gaze train step, JAX vs PyTorch, on a shared CPU: gated, interleaved, repeated.

  python scripts/benchmark_gaze_cpu.py --image_size=112 --batch_size=4 --timesteps=5 \
      --variants=torch,jax:reflect:ynnpack:1,jax:reflect:ynnpack --rounds=2 --json_out=F \
      [--single_core] [--torch_compile=both]

A JAX variant "jax:<padding>:<conv>[:<decoder_chunk>[:noremat]]" runs scripts/profile_step.py
on configs/gaze.py:thesis,paper at the given size with config.model.padding, the XLA:CPU
convolution library (config.train.xla_cpu_conv) and the memory mode (decoder_chunk 1; 0 or
absent: the batched decoder; noremat: config.model.memory_remat False); "torch" runs
scripts/benchmark_torch.py (the thesis code's per-step decoder, channels-last;
--torch_compile=both: eager then torch.compile in the same process). Each run is its own
process.

Load cannot fool it: every run waits until the 1-min load is below --max_load (default 1)
and other processes are idle, and measures the CPU the other processes used while it ran
(dermjax.profiling.measured_run); a run that was not quiet is kept in the JSON as invalid
and never enters a ratio. Rounds run the variants in alternating order (ABBA: a drift in
machine speed cancels in the mean), each round inside one hold of the machine's exclusive
benchmark lock (--lock_file; --lock_per=run: one hold per run, for long 224 px runs).
--single_core pins every run to one core (XLA sizes its thread pools from the affinity;
torch gets --threads=1): far less sensitive to other jobs, a ratio of single-thread kernels.
The ratio of a round is JAX images/s / PyTorch images/s of that round, only when both runs
are valid; the summary gives every valid round's ratio and their median.
"""

import argparse
import json
import os
import statistics
import sys
import time

from dermjax import fileio
from dermjax import profiling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(variant, args, json_out):
  py = sys.executable
  if variant == "torch":
    return [py, os.path.join(REPO, "scripts", "benchmark_torch.py"),
            f"--image_size={args.image_size}", f"--batch_size={args.batch_size}",
            f"--num_steps={args.timesteps}", f"--num_warmup={args.num_warmup}",
            f"--num_timed={args.num_timed}", f"--compile={args.torch_compile}",
            f"--threads={1 if args.single_core else 0}", "--device=cpu",
            "--no-matmul_peak", f"--json_out={json_out}"]
  parts = variant.split(":")
  if (parts[0] != "jax" or len(parts) not in (3, 4, 5)
      or (len(parts) == 5 and parts[4] != "noremat")):
    raise ValueError(f"variant {variant!r}: 'torch' or "
                     "'jax:<padding>:<conv>[:<chunk>[:noremat]]'")
  chunk = parts[3] if len(parts) >= 4 else "0"
  remat = ["--nomemory_remat"] if len(parts) == 5 else []
  return [py, os.path.join(REPO, "scripts", "profile_step.py"),
          "--config=" + os.path.join(REPO, "configs", "gaze.py") + ":thesis,paper",
          f"--config.data.image_size={args.image_size}",
          f"--config.data.batch_size={args.batch_size}",
          f"--config.data.eval_batch_size={args.batch_size}",
          f"--config.model.timesteps={args.timesteps}",
          f"--config.model.padding={parts[1]}", f"--config.train.xla_cpu_conv={parts[2]}",
          f"--decoder_chunk={chunk}", *remat,
          f"--num_warmup={args.num_warmup}", f"--num_timed={args.num_timed}",
          "--noeval", "--nomatmul_peak", f"--json_out={json_out}"]


def summary(variant, result):
  """{name: {"median_s", "images_per_s", ...}} rows of one run's result (torch: eager and,
  with --torch_compile=both, torch_compile)."""
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


def round_rows(runs: list[dict]) -> dict:
  """The valid runs of one round -> {name: row}; each JAX row gets its ratio to every torch
  row of the round (JAX images/s / torch images/s)."""
  rows = {}
  for run in runs:
    if run["valid"]:
      for name, row in summary(run["variant"], run["result"]).items():
        rows[name] = {**row, "load_1min_before": run["usage"]["load_1min_before"],
                      "foreign_cores": run["usage"]["foreign_cores"]}
  for base in ("torch_eager", "torch_compile"):
    if base in rows:
      for name, row in rows.items():
        if name.startswith("jax"):
          row[f"ratio_to_{base}"] = row["images_per_s"] / rows[base]["images_per_s"]
  return rows


def ratio_summary(rounds: list[dict]) -> dict:
  """{jax variant: {"ratio_to_torch_eager": [per valid round], "median": ...}} (and the
  same for torch_compile), plus images/s per round of every row."""
  out = {}
  for rows in rounds:
    for name, row in rows.items():
      entry = out.setdefault(name, {"images_per_s": []})
      entry["images_per_s"].append(row["images_per_s"])
      for key, value in row.items():
        if key.startswith("ratio_to_"):
          entry.setdefault(key, []).append(value)
  for entry in out.values():
    for key in [k for k in entry if k.startswith("ratio_to_") or k == "images_per_s"]:
      entry[key + "_median"] = statistics.median(entry[key])
  return out


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=112)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--timesteps", type=int, default=5)
  parser.add_argument("--num_warmup", type=int, default=1)
  parser.add_argument("--num_timed", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--torch_compile", default="off", choices=("off", "on", "both"))
  parser.add_argument("--variants", default="torch,jax:reflect:ynnpack:1,jax:reflect:ynnpack")
  profiling.add_quiet_machine_args(parser)
  parser.add_argument("--json_out", required=True)
  args = parser.parse_args(argv)
  if args.rounds < 2 and not args.run_when_loud:
    parser.error("--rounds must be >= 2 (interleaved rounds; 1 only with --run_when_loud)")
  for variant in args.variants.split(","):
    command(variant, args, "")  # Fails early on a bad variant.
  return args


def main(argv=None):
  args = parse_args(argv)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  record = {"args": vars(args), "machine": profiling.cpu_description(),
            "source": profiling.source_version(REPO),
            "cpu_count": os.cpu_count(),
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "runs": [],
            "rounds": []}
  variants = args.variants.split(",")
  for r in range(args.rounds):
    order = variants if r % 2 == 0 else variants[::-1]
    runs = []
    with profiling.lock_for(args, "round"):
      for variant in order:
        tmp = f"{args.json_out}.{r}.tmp"
        with profiling.lock_for(args, "run"):
          runs.append(profiling.measured_run(command(variant, args, tmp), tmp, args, env=env,
                                             meta={"round": r, "variant": variant}))
    record["runs"] += runs
    record["rounds"].append(round_rows(runs))
    record["summary"] = ratio_summary(record["rounds"])
    fileio.write_json(args.json_out, record)  # After every round: nothing measured is lost.
    print(json.dumps(record["rounds"][-1], indent=1), flush=True)
  record["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
  fileio.write_json(args.json_out, record)
  print(json.dumps(record["summary"], indent=1))
  return record


if __name__ == "__main__":
  main()
