"""Per-run choice of XLA:CPU's convolution library: YNNPACK fusions or Eigen.

This jaxlib (0.10.x) runs f32 NHWC convolutions on XLA:CPU through YNNPACK by default, in two
ways: a convolution alone ("individual_convolution" fusions) and a convolution pulled into a
YNNPACK reduce fusion with the adds and reductions that consume it (e.g. an input gradient
summed into the gradient of a channel reduction). `--xla_cpu_experimental_ynn_fusion_type=`
takes fusion types away from YNNPACK; what YNNPACK no longer takes, Eigen (convolutions) and
XLA's own loop emitter (reductions) run. The choices:

  ynnpack            jaxlib's default (no flag)
  eigen              every convolution in Eigen: -individual_convolution,-reduce (YNNPACK
                     keeps its dot and elementwise fusions)
  eigen_individual   -individual_convolution only (this module's "eigen" before 2026-12-02):
                     convolutions inside YNNPACK reduce fusions stay in YNNPACK

Which is faster depends on the CPU (BENCHMARKS.md, issue #24: per-shape and whole-step
numbers): on the one CPU measured quietly (AMD EPYC Zen 3, 2026-12-03) Eigen's convolutions
run at 1.07-1.12x PyTorch's (forward + both gradients, the gaze shapes) against YNNPACK's
0.48-0.65x, and the gaze step in memory mode went from 0.47x to 0.64x PyTorch eager with it.
DEFAULT stays "ynnpack" all the same: with "eigen" as the default, the suite's kill -9 /
resume test of dermjax.cv (tests/test_cv.py) once gave a resumed fold whose test threshold
differed from the uninterrupted run's by 2e-4 (CI, 2026-12-03; cause not yet found), and a
default must keep resumed runs equal. Other CPUs (AMX, avx512) are unmeasured: time both
with scripts/benchmark_conv_ceiling.py. XLA reads XLA_FLAGS once,
when the backend starts, so the choice must be applied
before anything touches jax devices:

  config.train.xla_cpu_conv = "ynnpack" | "eigen" | "eigen_individual" | ""
                              ("": $DERMJAX_XLA_CPU_CONV, else DEFAULT)

`dermjax.main` and scripts/profile_step.py call `apply(config.train.xla_cpu_conv)` first
thing; `dermjax.train.train_and_evaluate` calls it too and only warns when the backend is
already running with the other choice. GPU/TPU backends ignore the flag.
"""

import os

from absl import logging

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Choice -> the value of YNN_FLAG it sets (None: no flag, jaxlib's default).
FLAG_VALUES = {
    "ynnpack": None,
    "eigen": "-individual_convolution,-reduce",
    "eigen_individual": "-individual_convolution",
}
CHOICES = tuple(FLAG_VALUES)
DEFAULT = "ynnpack"
ENV = "DERMJAX_XLA_CPU_CONV"


def flag(choice: str) -> str | None:
  """The XLA_FLAGS entry of a choice (None for ynnpack)."""
  value = FLAG_VALUES[choice]
  return None if value is None else f"{YNN_FLAG}={value}"


def resolve(choice: str | None = None) -> str:
  """The effective choice: `choice`, else $DERMJAX_XLA_CPU_CONV, else DEFAULT."""
  choice = (choice or os.environ.get(ENV) or DEFAULT).strip().lower()
  if choice not in CHOICES:
    raise ValueError(f"config.train.xla_cpu_conv / ${ENV} must be one of {CHOICES} or '', "
                     f"got {choice!r}")
  return choice


def _ynn_flags(flags: list[str]) -> list[str]:
  return [f for f in flags if f.split("=", 1)[0] == YNN_FLAG]


def current() -> str:
  """The choice the XLA_FLAGS of this process select ("custom:<value>" for a YNN fusion
  setting that is none of the choices)."""
  ynn = _ynn_flags(os.environ.get("XLA_FLAGS", "").split())
  if not ynn:
    return "ynnpack"
  value = ynn[-1].split("=", 1)[1]
  return next((c for c, v in FLAG_VALUES.items() if v == value), f"custom:{value}")


def apply(choice: str | None = None) -> str:
  """Sets XLA_FLAGS for `choice` (see resolve) unless the backend already started; returns
  the choice in effect for this process."""
  from jax._src import xla_bridge  # Only to ask whether the backend has started.

  want = resolve(choice)
  if want == current():
    return want
  if xla_bridge.backends_are_initialized():
    logging.warning("xla_cpu_conv %r not applied: the JAX backend already started with %r "
                    "(set it before jax initialises, e.g. $%s)", want, current(), ENV)
    return current()
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=", 1)[0] != YNN_FLAG]
  if flag(want):
    flags.append(flag(want))
  os.environ["XLA_FLAGS"] = " ".join(flags)
  return want
