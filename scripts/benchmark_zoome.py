"""ZooME's train step speed and Zoom-SE's share of it (BENCHMARKS.md, "ZooME").

  python scripts/benchmark_zoome.py [--batch_size=64] [--num_warmup=1] [--num_timed=2]
      [--json_out=F]

Profiles the trainer's own jitted train step (scripts/profile_step.py's `profile`) at the
paper's 224 px and fp32 for `zoome` (ResNeXt-50 + Zoom-SE + metadata) and `no_zoomse` (the
same without Zoom-SE), on a synthetic host batch; Zoom-SE's share of the step is
1 - t(no_zoomse) / t(zoome), and, robust to a shared machine's changing load, the 16 Zoom-SE
modules alone (forward + backward at the step's shapes) / t(zoome). Records the CPU model and the load average before and after
(the machine may be shared).
"""

import argparse
import json
import os
import runpy

import numpy as np

from dermjax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ResNeXt-50 block outputs at 224 px: (count, side, channels) per stage.
RESNEXT50_BLOCKS = ((3, 56, 256), (4, 28, 512), (6, 14, 1024), (3, 7, 2048))


def zoom_se_alone(batch_size: int, num_timed: int = 5) -> dict:
  """The 16 Zoom-SE modules of ResNeXt-50 at 224 px alone (forward + backward to their input
  and parameters with random output cotangents, jitted), median seconds over num_timed runs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dermjax import profiling  # pylint: disable=g-import-not-at-top
  from dermjax.models.zoome import ZoomSE  # pylint: disable=g-import-not-at-top

  module = ZoomSE()
  inputs, params, cotangents = [], [], []
  for count, side, channels in RESNEXT50_BLOCKS:
    for k in range(count):
      u = jax.random.normal(jax.random.key(k), (batch_size, side, side, channels))
      inputs.append(u)
      params.append(module.init(jax.random.key(k), u)["params"])
      cotangents.append(jax.random.normal(jax.random.key(100 + k), u.shape))

  @jax.jit
  def step(params, inputs, cotangents):  # Random cotangents: nothing for XLA to fold away.
    def total(params, inputs):
      return sum(jnp.sum(module.apply({"params": p}, u) * g)
                 for p, u, g in zip(params, inputs, cotangents))
    return jax.grad(total, argnums=(0, 1))(params, inputs)

  _, times = profiling.time_steps(lambda _: step(params, inputs, cotangents), None, num_warmup=1,
                                  num_timed=num_timed)
  return {"median_s": float(np.median(times)), "times_s": times}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_warmup", type=int, default=1)
  parser.add_argument("--num_timed", type=int, default=2)
  parser.add_argument("--rows", default="zoome,no_zoomse", help="table rows ('' for none)")
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args(argv)
  profile = runpy.run_path(os.path.join(REPO, "scripts", "profile_step.py"),
                           run_name="profile_step")["profile"]
  out = {"batch_size": args.batch_size, "image_size": 224, "dtype": "float32",
         "num_warmup": args.num_warmup, "num_timed": args.num_timed,
         "load_average_before": os.getloadavg(), "rows": {}}
  for row in filter(None, args.rows.split(",")):
    config = config_lib.load_config(os.path.join(REPO, "configs", "zoome.py"), f"{row},paper")
    config.data.batch_size = config.data.eval_batch_size = args.batch_size
    result = profile(config, num_warmup=args.num_warmup, num_timed=args.num_timed, eval_step=False,
                     matmul_peak=False)
    train = result["train"]
    out["rows"][row] = {"median_s": train["median_s"], "images_per_s": train["images_per_s"],
                        "times_s": train["times_s"], "compile": result["train_compile"],
                        "num_params": result["num_params"],
                        "train_flops_per_image": result["train_flops_per_image"]}
    out["machine"] = result["machine"]
    print(row, json.dumps(out["rows"][row]), flush=True)
  out["zoom_se_alone"] = zoom_se_alone(args.batch_size)
  rows = out["rows"]
  if "zoome" in rows and "no_zoomse" in rows:
    out["zoom_se_share_of_step"] = 1 - rows["no_zoomse"]["median_s"] / rows["zoome"]["median_s"]
  if "zoome" in rows:
    out["zoom_se_alone_share_of_step"] = out["zoom_se_alone"]["median_s"] / rows["zoome"]["median_s"]
  out["load_average_after"] = os.getloadavg()
  text = json.dumps(out, indent=2, default=lambda v: np.asarray(v).tolist())
  print(text)
  if args.json_out:
    with open(args.json_out, "w") as f:
      f.write(text + "\n")
  return out


if __name__ == "__main__":
  main()
