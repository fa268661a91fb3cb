"""MASLL train step speed (both backbones) and the on-device SLL crop's share of the step.

  PYTHONPATH=$PWD python scripts/benchmark_masll.py [--rows=masll_resnet101,masll_densenet121]
      [--scale=paper|cpu] [--batch_size=B] [--num_warmup=1] [--num_timed=2] [--json_out=F]

For each row of configs/masll.py: the trainer's own jitted train step (scripts/profile_step.py's
`profile`: synthetic uint8 host batch, on-device augmentation, fp32 unless the config says
otherwise), then the SLL alone, jitted on the step's shapes: map_box of a [B, S/32, S/32]
map + crop_and_resize of the [B, S, S, 3] batch to S x S (forward only: the train step
differentiates the parameters, and neither the box nor the image needs a gradient). Its
median time over the train step's median is the crop's share. Also records the CPU model
and `os.getloadavg()` before and after (shared machines: say so next to the numbers).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dermjax import config_lib, profiling
from dermjax.models.common import crop
from scripts import profile_step  # scripts/ as a namespace package (PYTHONPATH=repo root).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_list("rows", ["masll_resnet101", "masll_densenet121"], "configs/masll.py rows.")
flags.DEFINE_enum("scale", "paper", ["paper", "cpu"], "Table scale.")
flags.DEFINE_integer("batch_size", 0, "Train batch (0: the table's, 15 at paper scale).")
flags.DEFINE_integer("num_warmup", 1, "Untimed train steps after compilation.")
flags.DEFINE_integer("num_timed", 2, "Timed train steps (median reported).")
flags.DEFINE_integer("crop_timed", 20, "Timed calls of the crop alone.")
flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
FLAGS = flags.FLAGS


def time_crop(batch_size: int, size: int, num_timed: int) -> dict:
  """Median seconds of the jitted map_box + crop_and_resize on MASLL's shapes."""
  rng = np.random.default_rng(0)
  maps = jnp.asarray(rng.random((batch_size, size // 32, size // 32)), jnp.float32)
  images = jnp.asarray(rng.normal(size=(batch_size, size, size, 3)), jnp.float32)
  sll = jax.jit(lambda m, x: crop.crop_and_resize(x, crop.map_box(m), size))
  _, times = profiling.time_steps(lambda _: sll(maps, images), None, num_warmup=3,
                                  num_timed=num_timed)
  return {"median_s": float(np.median(times)), "min_s": float(np.min(times))}


def main(argv):
  del argv
  results = {"load_average_before": os.getloadavg(), "rows": {}}
  start = time.perf_counter()
  for row in FLAGS.rows:
    table = os.path.join(ROOT, "configs", "masll.py")
    config = config_lib.load_config(table, f"{row},{FLAGS.scale}")
    if FLAGS.batch_size:
      config.data.batch_size = config.data.eval_batch_size = FLAGS.batch_size
    result = profile_step.profile(config, num_warmup=FLAGS.num_warmup, num_timed=FLAGS.num_timed,
                                  eval_step=False, matmul_peak=False)
    sll = time_crop(int(config.data.batch_size), int(config.data.image_size), FLAGS.crop_timed)
    sll["fraction_of_train_step"] = sll["median_s"] / result["train"]["median_s"]
    result["sll_crop"] = sll
    results["rows"][row] = result
    print(profiling.format_table(profile_step.summary_rows(result) + [
        ("SLL box + crop alone (ms)", sll["median_s"] * 1e3),
        ("SLL share of train step (%)", 100 * sll["fraction_of_train_step"])]), flush=True)
  results["load_average_after"] = os.getloadavg()
  results["wall_s"] = time.perf_counter() - start
  text = json.dumps(results, indent=1)
  print(text)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
