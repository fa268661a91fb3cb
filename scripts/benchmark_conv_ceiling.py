"""The backend ceiling of the gaze train step: its convolutions alone, JAX vs PyTorch.

  python scripts/benchmark_conv_ceiling.py --image_size=112 --batch_size=4 --timesteps=5 \
      --impls=jax:ynnpack,jax:eigen,torch --rounds=2 --json_out=F [--single_core]

Every distinct 3x3 convolution shape of the gaze step (configs/gaze.py "thesis": frozen
VGG16-BN encoder forward, Attentive ConvLSTM, decoder once per step as the thesis code and
scripts/benchmark_torch.py run it, diagnosis VGG blocks 4-5; `gaze_conv_shapes`) is timed
alone, NHWC / channels-last, zero padding 1, no bias, in three passes: forward, input
gradient (dx) and weight gradient (dw), each its own call:
  jax:<lib>[:<form>]  lib ynnpack | eigen | eigen_individual: XLA:CPU's convolution library
                      for the process (dermjax.xla_cpu); form conv (default): the model's
                      own convolutions (dermjax.conv.canonical_conv and the canonical
                      gradient convolutions its VJP runs), patches: im2col + one dot
                      (dermjax.conv.patches_*)
  torch               F.conv2d and aten.convolution_backward with one output mask per pass
                      (what autograd runs), oneDNN.
Each implementation runs in its own process (no two thread pools in one process), one after
the other, in reversed order on odd rounds. Before every run the script takes the machine's
exclusive benchmark lock (--lock_file; held for one round, then released) and waits until
the 1-min load is below --max_load and other processes are idle (dermjax.profiling
.wait_until_quiet); during the run it measures the CPU every other process used; a run
that was not quiet is kept in the JSON as invalid and never enters a ratio.

The ceiling composes the step's convolution time from these: sum over shapes and passes of
(times the step runs that pass at that shape) x (median time). ceiling = torch conv time /
JAX conv time: the JAX / PyTorch images/s ratio the step would reach if everything but the
convolutions cost nothing in both (or the same). "best_jax" picks, per shape and pass, the
fastest JAX implementation measured (the bound of a per-shape choice).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dermjax import conv
from dermjax import fileio
from dermjax import profiling
from dermjax import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSES = ("fwd", "dx", "dw")


def gaze_conv_shapes(image_size: int, batch_size: int, timesteps: int) -> list[dict]:
  """The gaze step's distinct 3x3 convolutions, as PyTorch's per-step decoder runs them:
  [{"name", "n", "hw", "cin", "cout", "fwd", "dx", "dw"}], the last three the number of times
  the step runs that pass (frozen encoder: forward only; W_a's input is stop-gradient'ed:
  no dx). Shapes shared by several layers are merged."""
  s, t, b = int(image_size), int(timesteps), int(batch_size)
  h = s // 8
  layers = [  # (hw, cin, cout, fwd, dx, dw) per layer
      (s, 3, 64, 1, 0, 0), (s, 64, 64, 1, 0, 0), (s // 2, 64, 128, 1, 0, 0),
      (s // 2, 128, 128, 1, 0, 0), (s // 4, 128, 256, 1, 0, 0), (s // 4, 256, 256, 2, 0, 0),
      (h, 256, 256, 1, 0, 1),                                            # W_a
      (h, 256, 256, t, t, t), (h, 256, 1, t, t, t), (h, 256, 1024, 2 * t, 2 * t, 2 * t),
      (s // 4, 256, 256, 2 * t, 2 * t, 2 * t), (s // 4, 256, 128, t, t, t),  # decoder
      (s // 2, 128, 128, t, t, t), (s // 2, 128, 64, t, t, t),
      (s, 64, 64, t, t, t), (s, 64, 1, t, t, t),
      (h, 256, 512, 1, 1, 1), (h, 512, 512, 2, 2, 2), (h // 2, 512, 512, 3, 3, 3),  # diagnosis
  ]
  merged = {}
  for hw, cin, cout, *counts in layers:
    row = merged.setdefault((hw, cin, cout), {"name": f"{hw}px_{cin}to{cout}", "n": b, "hw": hw,
                                              "cin": cin, "cout": cout, "fwd": 0, "dx": 0, "dw": 0})
    for p, c in zip(PASSES, counts):
      row[p] += c
  return list(merged.values())


def conv_flops(shape: dict) -> float:
  """FLOPs of one pass (2 per multiply-add; the three passes are equal)."""
  return 2.0 * shape["n"] * shape["hw"] ** 2 * shape["cin"] * shape["cout"] * 9


def _timed(fn, sync, *, min_time_s: float, min_calls: int = 3, max_calls: int = 50) -> dict:
  """Compile / first call, then enough calls for min_time_s; median and min seconds."""
  start = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - start
  start = time.perf_counter()
  sync(fn())
  once = time.perf_counter() - start
  n = max(min_calls, min(max_calls, math.ceil(min_time_s / max(once, 1e-6))))
  times = []
  for _ in range(n):
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
  times.sort()
  return {"median_s": times[len(times) // 2], "min_s": times[0], "calls": n, "first_s": first}


def _jax_passes(shape, form, dtype):
  """{pass: zero-argument callable} of the JAX implementation `form`."""
  rng = np.random.default_rng(0)
  n, hw, cin, cout = shape["n"], shape["hw"], shape["cin"], shape["cout"]
  x = jnp.asarray(rng.normal(size=(n, hw, hw, cin)), dtype)
  w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin), dtype)
  dy = jnp.asarray(rng.normal(size=(n, hw, hw, cout)), dtype)
  pad = ((1, 1), (1, 1))
  fns = {"conv": (conv.canonical_conv, conv.input_grad, conv.weight_grad),
         "patches": (conv.patches_conv, conv.patches_input_grad, conv.patches_weight_grad)}[form]
  fwd, dx, dw = (jax.jit(lambda a, b, f=f: f(a, b, pad)) for f in fns)
  return {"fwd": lambda: fwd(x, w), "dx": lambda: dx(dy, w), "dw": lambda: dw(x, dy)}


def _torch_passes(shape, dtype):
  import torch  # Lazy: torch is optional, and a JAX worker should not load it.

  gen = torch.Generator().manual_seed(0)
  n, hw, cin, cout = shape["n"], shape["hw"], shape["cin"], shape["cout"]
  cl = torch.channels_last
  dt = getattr(torch, dtype)
  x = torch.randn(n, cin, hw, hw, generator=gen).to(dt, memory_format=cl)
  w = (torch.randn(cout, cin, 3, 3, generator=gen) / (9 * cin) ** 0.5).to(dt, memory_format=cl)
  dy = torch.randn(n, cout, hw, hw, generator=gen).to(dt, memory_format=cl)

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(
        dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

  return {"fwd": lambda: torch.nn.functional.conv2d(x, w, padding=1),
          "dx": backward([True, False, False]), "dw": backward([False, True, False])}


def worker(impl: str, shapes: list[dict], *, dtype: str, threads: int, min_time_s: float) -> dict:
  """Times every shape's three passes with one implementation, in this process."""
  parts = impl.split(":")
  if parts[0] == "torch":
    import torch  # Lazy, as in _torch_passes.

    if threads:
      torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    make, sync = (lambda s: _torch_passes(s, dtype)), (lambda r: r)
    machine = profiling.machine_info(torch_device="cpu", jax_devices=False)
  else:
    xla_cpu.apply(parts[1])  # Before JAX starts its backend (importing jax does not).
    form = parts[2] if len(parts) > 2 else "conv"
    make, sync = (lambda s: _jax_passes(s, form, jnp.dtype(dtype))), jax.block_until_ready
    machine = {**profiling.machine_info(), "xla_cpu_conv": xla_cpu.current(),
               "xla_flags": os.environ.get("XLA_FLAGS", "")}
  rows = {}
  for shape in shapes:
    calls = make(shape)
    rows[shape["name"]] = {p: _timed(calls[p], sync, min_time_s=min_time_s) for p in PASSES
                           if shape[p]}
  return {"impl": impl, "dtype": dtype, "machine": machine, "shapes": rows}


def check_impl(impl: str) -> str:
  parts = impl.split(":")
  ok = (parts == ["torch"] or (parts[0] == "jax" and len(parts) in (2, 3)
                               and parts[1] in xla_cpu.CHOICES
                               and (len(parts) == 2 or parts[2] in ("conv", "patches"))))
  if not ok:
    raise ValueError(f"--impls: {impl!r} is not 'torch' or "
                     f"'jax:<{'|'.join(xla_cpu.CHOICES)}>[:conv|patches]'")
  return impl


def step_conv_seconds(shapes: list[dict], timings: dict) -> float:
  """The step's convolution seconds: sum of count x median over shapes and passes."""
  return sum(s[p] * timings[s["name"]][p]["median_s"] for s in shapes for p in PASSES if s[p])


def best_of(results: list[dict], shapes: list[dict]) -> dict:
  """Per shape and pass, the fastest of several implementations' timings (same layout)."""
  out = {}
  for s in shapes:
    out[s["name"]] = {}
    for p in PASSES:
      if s[p]:
        out[s["name"]][p] = min((r["shapes"][s["name"]][p] for r in results),
                                key=lambda t: t["median_s"])
  return out


def ceiling_summary(runs: list[dict], shapes: list[dict]) -> dict:
  """From the valid runs: per implementation its per-round step conv seconds; per round the
  ceilings (torch conv seconds / JAX conv seconds) and their median over rounds."""
  by_round = {}
  for run in runs:
    if run["valid"]:
      by_round.setdefault(run["round"], {})[run["impl"]] = run["result"]
  rounds = []
  for r, results in sorted(by_round.items()):
    seconds = {impl: step_conv_seconds(shapes, res) for impl, res in
               ((i, x["shapes"]) for i, x in results.items())}
    jax_results = [x for i, x in results.items() if i.startswith("jax")]
    if len(jax_results) > 1:
      seconds["best_jax"] = step_conv_seconds(shapes, best_of(jax_results, shapes))
    row = {"round": r, "step_conv_s": seconds}
    if "torch" in seconds:
      row["ceiling"] = {i: seconds["torch"] / v for i, v in seconds.items() if i != "torch"}
    rounds.append(row)
  medians = {}
  for row in rounds:
    for i, v in row.get("ceiling", {}).items():
      medians.setdefault(i, []).append(v)
  return {"rounds": rounds, "ceiling_median": {i: statistics.median(v) for i, v in
                                               medians.items()},
          "ceiling_rounds": {i: len(v) for i, v in medians.items()}}


def _worker_command(args, impl, json_out):
  return [sys.executable, os.path.abspath(__file__), f"--worker={impl}",
          f"--image_size={args.image_size}", f"--batch_size={args.batch_size}",
          f"--timesteps={args.timesteps}", f"--dtype={args.dtype}", f"--shapes={args.shapes}",
          f"--threads={1 if args.single_core else 0}", f"--min_time_s={args.min_time_s}",
          f"--json_out={json_out}"]


def run_benchmark(args) -> dict:
  """The driver: rounds x implementations, each a gated, measured subprocess."""
  shapes = select_shapes(args)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  record = {"args": vars(args), "machine": profiling.cpu_description(),
            "source": profiling.source_version(REPO),
            "cpu_count": os.cpu_count(), "shapes": shapes,
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "runs": []}
  impls = args.impls.split(",")
  for r in range(args.rounds):
    order = impls if r % 2 == 0 else impls[::-1]
    with profiling.lock_for(args, "round"):
      for impl in order:
        tmp = f"{args.json_out}.{impl}.tmp"
        with profiling.lock_for(args, "run"):
          record["runs"].append(profiling.measured_run(
              _worker_command(args, impl, tmp), tmp, args, env=env,
              meta={"round": r, "impl": impl}))
    record["summary"] = ceiling_summary(record["runs"], shapes)
    fileio.write_json(args.json_out, record)  # After every round: nothing measured is lost.
  record["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
  fileio.write_json(args.json_out, record)
  print(json.dumps(record["summary"], indent=1))
  return record


def select_shapes(args) -> list[dict]:
  shapes = gaze_conv_shapes(args.image_size, args.batch_size, args.timesteps)
  if not args.shapes:
    return shapes
  wanted = args.shapes.split(",")
  unknown = sorted(set(wanted) - {s["name"] for s in shapes})
  if unknown:
    raise ValueError(f"--shapes: unknown {unknown}; known: {[s['name'] for s in shapes]}")
  return [s for s in shapes if s["name"] in wanted]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=112)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--timesteps", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--impls", default="jax:ynnpack,jax:eigen,torch")
  parser.add_argument("--shapes", default="", help="Comma-separated shape names (default all).")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--min_time_s", type=float, default=0.5,
                      help="Timed calls per pass: enough for this many seconds (3 to 50).")
  profiling.add_quiet_machine_args(parser)
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--json_out", required=True)
  args = parser.parse_args(argv)
  for impl in (args.worker or args.impls).split(","):
    check_impl(impl)
  if args.rounds < 1:
    parser.error("--rounds must be >= 1")
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    result = worker(args.worker, select_shapes(args), dtype=args.dtype, threads=args.threads,
                    min_time_s=args.min_time_s)
    with open(args.json_out, "w") as f:
      json.dump(result, f)
    return result
  return run_benchmark(args)


if __name__ == "__main__":
  main()
