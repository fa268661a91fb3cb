"""dermjax.xla_cpu: the per-run YNNPACK / Eigen convolution choice reaches XLA:CPU.

XLA reads XLA_FLAGS when its backend starts, so each choice runs in a fresh subprocess."""

import os
import subprocess
import sys

import pytest

from dermjax import xla_cpu

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = r"""
import re
import sys
from dermjax import xla_cpu
print("CHOICE", xla_cpu.apply(sys.argv[1] or None))
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC")))
text = f.lower(jnp.ones((2, 16, 16, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()
print("YNN", "ynn" in text.lower())
# An input-gradient convolution summed into a channel reduction's gradient: YNNPACK takes it
# into a reduce fusion unless "reduce" fusions are off too.
g = jax.jit(jax.grad(lambda x, w, a: jnp.sum(jnp.sum(jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) * a, -1) ** 2), (0, 1)))
text = g.lower(jnp.ones((2, 8, 8, 64)), jnp.ones((3, 3, 64, 32)),
               jnp.ones((2, 8, 8, 32))).compile().as_text()
bodies = dict(re.findall(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", text, re.S))
ynn = re.findall(r"calls=%([\w.\-]+)[^\n]*__ynn_fusion", text)
print("YNN_CONV", any(" convolution(" in bodies.get(c, "") for c in ynn))
print("AFTER", xla_cpu.apply("eigen" if xla_cpu.current() == "ynnpack" else "ynnpack"))
"""


def run(choice, env_choice=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith(xla_cpu.YNN_FLAG))
  env.pop(xla_cpu.ENV, None)
  if env_choice:
    env[xla_cpu.ENV] = env_choice
  proc = subprocess.run([sys.executable, "-c", SCRIPT, choice], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


@pytest.mark.parametrize("choice,env_choice,want", [
    ("eigen", None, "eigen"), ("ynnpack", "eigen", "ynnpack"), ("", "eigen", "eigen"),
    ("", None, xla_cpu.DEFAULT), ("eigen_individual", None, "eigen_individual")])
def test_choice_reaches_the_compiled_program(choice, env_choice, want):
  out = run(choice, env_choice)
  assert out["CHOICE"] == want
  assert out["YNN"] == str(want == "ynnpack")  # A lone convolution: YNNPACK only if ynnpack.
  # A convolution YNNPACK would fuse into a reduction: in Eigen with "eigen" only.
  assert out["YNN_CONV"] == str(want != "eigen")
  assert out["AFTER"] == want                  # Too late to change once the backend runs.


def test_bad_choice():
  with pytest.raises(ValueError, match="xla_cpu_conv"):
    xla_cpu.resolve("onednn")
