"""Speed measurement shared by the benchmark scripts (scripts/profile_step.py,
scripts/benchmark_torch.py, scripts/benchmark_gaze_cpu.py, scripts/benchmark_conv_ceiling.py).

They time a step the same way (`time_steps`: warm-up calls, then per-call wall times with the
device synchronised after every call, summarised by the median), measure the same device's
dense-matmul peak (`matmul_peak_jax` / `matmul_peak_torch`) so that an achieved FLOP/s becomes
an MFU, and describe the machine the same way (`machine_info`: CPU model, family and ISA
flags with every number). On a shared machine a time is only a result when nothing else ran:
`wait_until_quiet` gates a run on the 1-minute load, `cpu_snapshot` / `cpu_usage` measure the
CPU other processes used during it, `run_is_valid` judges it, `exclusive_lock` takes the
machine's benchmark lock for one short hold. torch is imported lazily: the JAX side never
needs it.
"""

import argparse
import contextlib
import fcntl
import glob
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def block(tree):
  """Waits until every jax array in `tree` is computed; returns `tree`."""
  return jax.block_until_ready(tree)


def time_steps(step: Callable[[Any], Any], carry, *, num_warmup: int, num_timed: int,
               sync: Callable[[Any], Any] = block):
  """Runs `carry = step(carry)` num_warmup + num_timed times; times each timed call.

  `sync(carry)` runs after every call (device synchronisation: the default waits for jax
  arrays; torch passes `torch.cuda.synchronize`-based syncs), so a time is the call's
  full latency. Returns (carry, list of num_timed wall-clock seconds).
  """
  if num_timed < 1:
    raise ValueError(f"num_timed must be >= 1, got {num_timed}")
  for _ in range(num_warmup):
    carry = sync(step(carry))
  times = []
  for _ in range(num_timed):
    start = time.perf_counter()
    carry = sync(step(carry))
    times.append(time.perf_counter() - start)
  return carry, times


def summarize(times: Sequence[float], *, batch_size: int, flops_per_step: float | None = None,
              peak_flops: float | None = None) -> dict:
  """Per-step wall times -> {median_s, min_s, max_s, images_per_s, [tflops, mfu]}.

  flops_per_step: FLOPs of one step (e.g. from `compiled_flops`); peak_flops: the device's
  measured matmul FLOP/s. The MFU is achieved FLOP/s (at the median time) / peak.
  """
  median = statistics.median(times)
  out = {
      "steps_timed": len(times),
      "median_s": median,
      "min_s": min(times),
      "max_s": max(times),
      "images_per_s": batch_size / median,
  }
  if flops_per_step:
    out["flops_per_image"] = flops_per_step / batch_size
    out["achieved_tflops"] = flops_per_step / median / 1e12
    if peak_flops:
      out["mfu"] = flops_per_step / median / peak_flops
  return out


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled XLA program (`jax.jit(f).lower(...).compile()`).

  From XLA's cost analysis (2 FLOPs per multiply-add); None when the backend reports none.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per program.
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  flops = float(analysis["flops"])
  return flops if flops > 0 else None


def compiled_memory(compiled) -> dict:
  """Argument/output/temp bytes XLA planned for a compiled program ({} when unknown)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  return {name: int(getattr(stats, name)) for name in (
      "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
      "temp_size_in_bytes") if hasattr(stats, name)}


def _dtype_name(dtype) -> str:
  name = np.dtype(jnp.dtype(dtype)).name if not isinstance(dtype, str) else dtype
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"matmul peak dtype must be float32, bfloat16 or float16, got {dtype!r}")
  return name


def matmul_peak_jax(dtype="float32", *, n: int = 2048, num_warmup: int = 2,
                    num_timed: int = 5, device=None) -> float:
  """Measured dense [n, n] @ [n, n] FLOP/s of one jax device (2 n^3 FLOPs per product).

  The product is chained 4 times inside one jitted call so dispatch overhead is amortised.
  Returns the best (max) FLOP/s over the timed calls: a peak, not a typical rate. Products
  accumulate and return float32 (`preferred_element_type`), as the models' mixed-precision
  layers do: on CPUs with AMX only bf16 x bf16 -> f32 dots reach the matrix units (a bf16
  result runs several times slower and would make every bf16 MFU look too high).
  """
  name = _dtype_name(dtype)
  device = device or jax.devices()[0]
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.device_put(jax.random.normal(key_a, (n, n), jnp.float32).astype(name), device)
  b = jax.device_put((jax.random.normal(key_b, (n, n), jnp.float32) / np.sqrt(n)).astype(name),
                     device)
  chain = 4

  @jax.jit
  def products(a, b):
    for _ in range(chain):
      a = jnp.dot(a, b, preferred_element_type=jnp.float32).astype(b.dtype)
    return a

  _, times = time_steps(lambda x: products(x, b), a, num_warmup=num_warmup, num_timed=num_timed)
  return chain * 2.0 * n**3 / min(times)


def torch_sync(device: str):
  """A `sync` for `time_steps` that waits for torch work on `device` ("cpu" | "cuda...")."""
  import torch  # Lazy: torch is an optional, test-only dependency.

  def sync(carry):
    if str(device).startswith("cuda"):
      torch.cuda.synchronize(device)
    return carry

  return sync


def matmul_peak_torch(dtype="float32", *, n: int = 2048, num_warmup: int = 2,
                      num_timed: int = 5, device: str = "cpu") -> float:
  """Measured dense [n, n] @ [n, n] FLOP/s of torch on `device`, timed as matmul_peak_jax."""
  import torch

  name = _dtype_name(dtype)
  torch_dtype = getattr(torch, name)
  gen = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
  b = (torch.randn(n, n, generator=gen) / n**0.5).to(device=device, dtype=torch_dtype)
  chain = 4

  def products(x):
    with torch.no_grad():
      for _ in range(chain):
        x = x @ b
    return x

  _, times = time_steps(products, a, num_warmup=num_warmup, num_timed=num_timed,
                        sync=torch_sync(device))
  return chain * 2.0 * n**3 / min(times)


def peak_memory(device=None) -> dict:
  """Peak memory so far: the device's peak bytes in use where the backend reports it
  (GPU/TPU), and this process's peak resident set size (the figure for CPU runs)."""
  device = device or jax.devices()[0]
  out = {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


# ISA flags that decide which kernels XLA:CPU / oneDNN can use (recorded with every number).
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  out = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
  except OSError:
    pass
  return out


def cpu_model() -> str:
  """The host CPU's model name (from /proc/cpuinfo; platform.processor() elsewhere)."""
  return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_description() -> dict:
  """{"cpu", "cpu_family", "cpu_model_number", "cpu_isa"}: model name, family / model
  numbers and which of ISA_FLAGS the CPU has (same model name, different CPUs: record all)."""
  info = _cpuinfo()
  flags = set(info.get("flags", "").split())
  return {"cpu": cpu_model(), "cpu_family": info.get("cpu family"),
          "cpu_model_number": info.get("model"), "cpu_isa": [f for f in ISA_FLAGS if f in flags]}


def machine_info(torch_device: str | None = None, *, jax_devices: bool = True) -> dict:
  """Machine and library versions for a benchmark record.

  torch_device: also record torch's version/threads (and GPU name). jax_devices=False
  leaves jax's backends uninitialised (a torch-only run keeps all GPU memory to torch).
  """
  import flax
  import jaxlib

  info = {
      **cpu_description(),
      "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
      "python": sys.version.split()[0],
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
  }
  if jax_devices:
    device = jax.devices()[0]
    info.update(platform=device.platform, device_kind=device.device_kind,
                num_devices=jax.device_count())
  if torch_device is not None:
    import torch

    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    if torch_device.startswith("cuda"):
      info["torch_device_kind"] = torch.cuda.get_device_name(torch_device)
  return info


# Trace events that wrap others (executors, loops, thread pools) or are Python frames ("$").
_WRAPPER_EVENTS = ("$", "ThunkExecutor", "ExecuteReplicated", "CommonPjRt", "PjRt",
                   "ThreadpoolListener", "SlinkyThreadPool", "while")


def trace_op_summary(trace_dir: str, *, num_steps: int, top: int = 40) -> list[dict]:
  """Per-op time of a jax.profiler trace (the newest .xplane.pb under trace_dir): the XLA
  ops' events of every plane (CPU thunks, GPU kernels), wrapper events left out, summed per
  op over all threads / streams and divided by num_steps; the `top` largest as
  [{"op", "ms_per_step", "calls_per_step", "share"}] (share of the summed op time; ops of
  parallel threads overlap in wall time, so the sum can exceed the step time)."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(files[-1])
  total, calls = {}, {}
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name.startswith(_WRAPPER_EVENTS):
          continue
        total[event.name] = total.get(event.name, 0.0) + event.duration_ns
        calls[event.name] = calls.get(event.name, 0) + 1
  whole = sum(total.values()) or 1.0
  rows = sorted(total, key=total.get, reverse=True)[:top]
  return [{"op": op, "ms_per_step": total[op] / 1e6 / num_steps,
           "calls_per_step": calls[op] / num_steps, "share": total[op] / whole} for op in rows]


def source_version(repo: str) -> str:
  """`git describe --always --dirty` of the checkout at `repo`, else $DERMJAX_SOURCE (set it
  when benchmarking a copy of the tree), else "unknown": which code a number measured."""
  try:
    return subprocess.run(["git", "-C", repo, "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return os.environ.get("DERMJAX_SOURCE", "unknown")


def load_average_1min() -> float:
  return os.getloadavg()[0]


def _proc_stat_seconds() -> tuple[float, float]:
  """(busy, steal) CPU seconds of the whole machine since boot (/proc/stat "cpu" line)."""
  with open("/proc/stat") as f:
    fields = [float(v) for v in f.readline().split()[1:]]
  tick = os.sysconf("SC_CLK_TCK")
  user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
  return (user + nice + system + irq + softirq) / tick, steal / tick


def _own_cpu_seconds() -> float:
  """CPU seconds of this process and its waited-for children (user + system)."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_snapshot() -> dict:
  """The machine's and this process's CPU counters now (pair two with `cpu_usage`)."""
  busy, steal = _proc_stat_seconds()
  return {"time": time.perf_counter(), "busy_s": busy, "steal_s": steal,
          "own_s": _own_cpu_seconds(), "load_1min": load_average_1min()}


def cpu_usage(before: dict, after: dict) -> dict:
  """What ran between two snapshots, in cores (CPU seconds per wall second):
  own_cores (this process and the children it waited for), foreign_cores (every other
  process: the interference), steal_cores (time the hypervisor gave to other guests),
  and the 1-min load at both ends. The load after a run includes the run itself (up to the
  cores it used), so interference is judged on foreign_cores, not on the load after."""
  wall = max(after["time"] - before["time"], 1e-9)
  own = (after["own_s"] - before["own_s"]) / wall
  busy = (after["busy_s"] - before["busy_s"]) / wall
  return {"wall_s": wall, "own_cores": own, "foreign_cores": max(busy - own, 0.0),
          "steal_cores": (after["steal_s"] - before["steal_s"]) / wall,
          "load_1min_before": before["load_1min"], "load_1min_after": after["load_1min"]}


def wait_until_quiet(max_load: float = 1.0, *, max_foreign: float = 0.3, timeout_s: float = 600,
                     sample_s: float = 5.0, log: Callable[[str], Any] = print) -> dict:
  """Waits (at most timeout_s) until the 1-min load is below max_load and other processes
  used under max_foreign cores over the last sample_s seconds; logs what it waits for every
  ~30 s. Returns {"quiet", "waited_s", "load_1min", "foreign_cores"} of the last sample."""
  start = time.perf_counter()
  last_log = -1e9
  while True:
    before = cpu_snapshot()
    time.sleep(sample_s)
    usage = cpu_usage(before, cpu_snapshot())
    waited = time.perf_counter() - start
    state = {"waited_s": waited, "load_1min": usage["load_1min_after"],
             "foreign_cores": usage["foreign_cores"]}
    if state["load_1min"] < max_load and state["foreign_cores"] < max_foreign:
      return {"quiet": True, **state}
    if waited >= timeout_s:
      log(f"not quiet after {waited:.0f} s: 1-min load {state['load_1min']:.2f} (need < "
          f"{max_load}), other processes {state['foreign_cores']:.2f} cores (need < {max_foreign})")
      return {"quiet": False, **state}
    if waited - last_log >= 30:
      last_log = waited
      log(f"waiting for a quiet machine: 1-min load {state['load_1min']:.2f} (need < {max_load}), "
          f"other processes {state['foreign_cores']:.2f} cores (need < {max_foreign}); "
          f"{waited:.0f} of {timeout_s:.0f} s")


def run_is_valid(gate: dict, usage: dict, *, max_load: float,
                 max_foreign: float) -> tuple[bool, str]:
  """(valid, reason) of one timed run: the quiet gate passed before it (1-min load below
  max_load) and other processes used under max_foreign cores on average during it."""
  problems = []
  if not gate.get("quiet") or gate["load_1min"] >= max_load:
    problems.append(f"1-min load {gate['load_1min']:.2f} >= {max_load} before the run")
  if usage["foreign_cores"] >= max_foreign:
    problems.append(f"other processes used {usage['foreign_cores']:.2f} cores during the run "
                    f"(>= {max_foreign})")
  return not problems, "; ".join(problems) or "quiet"


def _flock_blocking(f, timeout_s: float):
  """flock(LOCK_EX) that blocks, so it takes the lock at the first instant no other job
  holds it (flock gives a waiting exclusive request no priority over new shared ones: a
  poll could miss every short gap); TimeoutError after timeout_s (SIGALRM: main thread)."""
  def expire(signum, frame):
    raise TimeoutError(f"exclusive lock {f.name}: still held by others after {timeout_s:.0f} s")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 1e-3))
  try:
    fcntl.flock(f, fcntl.LOCK_EX)
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def exclusive_lock(path: str | None, *, timeout_s: float = 3600,
                   log: Callable[[str], Any] = print):
  """Holds an exclusive flock on `path` (the machine's shared benchmark lock; None or "":
  no lock) for the `with` body; waits at most timeout_s for it (TimeoutError)."""
  if not path:
    yield
    return
  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      start = time.perf_counter()
      log(f"waiting for the exclusive lock {path} (held by other jobs; at most {timeout_s:.0f} s)")
      _flock_blocking(f, timeout_s)
      log(f"exclusive lock {path} taken after {time.perf_counter() - start:.0f} s")
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def add_quiet_machine_args(parser: argparse.ArgumentParser):
  """The benchmark drivers' shared flags: the quiet gate, the lock, single-core pinning."""
  parser.add_argument("--max_load", type=float, default=1.0,
                      help="Run only when the 1-min load is below this.")
  parser.add_argument("--max_foreign", type=float, default=0.3,
                      help="Other processes' CPU (cores) during a run above which it is invalid.")
  parser.add_argument("--quiet_timeout_s", type=float, default=900,
                      help="Longest wait for a quiet machine before each run.")
  parser.add_argument("--quiet_sample_s", type=float, default=5.0,
                      help="Seconds over which the gate measures other processes' CPU.")
  parser.add_argument("--run_when_loud", action="store_true",
                      help="Run anyway (marked invalid) when no quiet window came (development).")
  parser.add_argument("--lock_file", default="/tmp/dermjax-cpu.lock",
                      help="The machine's benchmark lock, held exclusively ('': none).")
  parser.add_argument("--lock_per", default="round", choices=("round", "run"),
                      help="One hold of the lock per round (runs interleaved inside a hold) "
                      "or per run (shorter holds, for long runs).")
  parser.add_argument("--lock_timeout_s", type=float, default=3600)
  parser.add_argument("--single_core", action="store_true",
                      help="Pin every run to --core with one thread per framework.")
  parser.add_argument("--core", type=int, default=0)


def lock_for(args: argparse.Namespace, scope: str):
  """exclusive_lock on args.lock_file when args.lock_per == scope ("round" | "run"), else a
  no-op: `with lock_for(args, "round"): for ...: with lock_for(args, "run"): ...`."""
  return exclusive_lock(args.lock_file if args.lock_per == scope else None,
                        timeout_s=args.lock_timeout_s)


def measured_run(cmd: Sequence[str], result_path: str, args: argparse.Namespace, *,
                 env: dict | None = None, meta: dict | None = None) -> dict:
  """One gated, measured benchmark process (flags of add_quiet_machine_args in `args`).

  Waits for a quiet machine (wait_until_quiet), runs `cmd` (pinned to args.core with
  args.single_core), measures the CPU every other process used meanwhile and reads the JSON
  the command wrote to result_path. Returns meta + {"gate", "usage", "rc", "valid",
  "reason", "result"}; a run that was not quiet has valid False and never enters a ratio.
  """
  gate = wait_until_quiet(args.max_load, max_foreign=args.max_foreign,
                          timeout_s=args.quiet_timeout_s, sample_s=args.quiet_sample_s)
  run = {**(meta or {}), "gate": gate, "utc": time.strftime("%H:%M:%S", time.gmtime())}
  if not gate["quiet"] and not args.run_when_loud:
    run.update(valid=False, reason="not run: no quiet window", rc=None)
    print(json.dumps(run), flush=True)
    return run
  pin = (lambda: os.sched_setaffinity(0, {args.core})) if args.single_core else None
  before = cpu_snapshot()
  proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, preexec_fn=pin)
  run["usage"] = cpu_usage(before, cpu_snapshot())
  run["rc"] = proc.returncode
  run["valid"], run["reason"] = run_is_valid(gate, run["usage"], max_load=args.max_load,
                                             max_foreign=args.max_foreign)
  if proc.returncode == 0:
    with open(result_path) as f:
      run["result"] = json.load(f)
  else:
    run["valid"], run["reason"] = False, f"exit {proc.returncode}"
    run["stderr_tail"] = proc.stderr[-3000:]
  if os.path.exists(result_path):
    os.unlink(result_path)
  print(json.dumps({k: v for k, v in run.items() if k != "result"}), flush=True)
  return run


def format_table(rows: Sequence[tuple[str, Any]]) -> str:
  """Two-column plain-text table of (name, value) for terminal reports."""
  width = max(len(name) for name, _ in rows)
  lines = []
  for name, value in rows:
    if isinstance(value, float):
      value = f"{value:.4g}"
    lines.append(f"{name.ljust(width)}  {value}")
  return "\n".join(lines)
