"""Speed measurement shared by scripts/profile.py and scripts/benchmark_torch.py.

Both scripts time a step the same way (`time_steps`: warm-up calls, then per-call wall
times with the device synchronised after every call, summarised by the median), measure
the same device's dense-matmul peak (`matmul_peak_jax` / `matmul_peak_torch`) so that an
achieved FLOP/s becomes an MFU, and describe the machine the same way (`machine_info`).
torch is imported lazily: the JAX side never needs it.
"""

import os
import platform
import resource
import statistics
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


def cpu_model() -> str:
  """The host CPU's model name (from /proc/cpuinfo; platform.processor() elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info(torch_device: str | None = None, *, jax_devices: bool = True) -> dict:
  """Machine and library versions for a benchmark record.

  torch_device: also record torch's version/threads (and GPU name). jax_devices=False
  leaves jax's backends uninitialised (a torch-only run keeps all GPU memory to torch).
  """
  import flax
  import jaxlib

  info = {
      "cpu": cpu_model(),
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


def format_table(rows: Sequence[tuple[str, Any]]) -> str:
  """Two-column plain-text table of (name, value) for terminal reports."""
  width = max(len(name) for name, _ in rows)
  lines = []
  for name, value in rows:
    if isinstance(value, float):
      value = f"{value:.4g}"
    lines.append(f"{name.ljust(width)}  {value}")
  return "\n".join(lines)
