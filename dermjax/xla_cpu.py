"""Per-run choice of XLA:CPU's convolution library: YNNPACK fusions or Eigen.

This jaxlib (0.10.x) runs f32 NHWC convolutions on XLA:CPU (forward, input and weight
gradient) through YNNPACK fusions by default. `--xla_cpu_experimental_ynn_fusion_type=
-individual_convolution` sends them back to Eigen; which is faster depends on the shapes and
the CPU (BENCHMARKS.md: measured on the whole gaze step). XLA reads XLA_FLAGS once, when the
backend starts, so the choice must be applied before anything touches jax devices:

  config.train.xla_cpu_conv = "ynnpack" | "eigen" | ""   ("": $DERMJAX_XLA_CPU_CONV, else
                                                          DEFAULT)

`dermjax.main` and scripts/profile_step.py call `apply(config.train.xla_cpu_conv)` first
thing; `dermjax.train.train_and_evaluate` calls it too and only warns when the backend is
already running with the other choice. GPU/TPU backends ignore the flag.
"""

import os

from absl import logging

CHOICES = ("ynnpack", "eigen")
DEFAULT = "ynnpack"   # Faster on the whole gaze step at 112 px (BENCHMARKS.md, 2026-11-30).
ENV = "DERMJAX_XLA_CPU_CONV"
EIGEN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def resolve(choice: str | None = None) -> str:
  """The effective choice: `choice`, else $DERMJAX_XLA_CPU_CONV, else DEFAULT."""
  choice = (choice or os.environ.get(ENV) or DEFAULT).strip().lower()
  if choice not in CHOICES:
    raise ValueError(f"config.train.xla_cpu_conv / ${ENV} must be one of {CHOICES} or '', "
                     f"got {choice!r}")
  return choice


def current() -> str:
  """The choice the XLA_FLAGS of this process select."""
  return "eigen" if EIGEN_FLAG in os.environ.get("XLA_FLAGS", "").split() else "ynnpack"


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
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f != EIGEN_FLAG]
  if want == "eigen":
    flags.append(EIGEN_FLAG)
  os.environ["XLA_FLAGS"] = " ".join(flags)
  return want
