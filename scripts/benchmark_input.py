"""Input-pipeline throughput: images/s of prepared, augmented, sharded training batches.

Times what a train step receives: `Datasets.train` (grain workers decode the stored JPEGs
with draft downscaling, crop/resize on host, uint8 batches placed on the device mesh)
followed by the jitted `device_preprocess` (normalise + random rotation/flips/zoom of image
and masks). Without --data_dir it writes a synthetic ISIC 2017 set whose image sides are
drawn from [--min_side, --max_side] (real ISIC 2017 images are 1022 px and up on the short
side) and prepares it (both cached under --workdir).

  python scripts/benchmark_input.py --num_workers=2 --num_batches=40 --write
"""

import datetime
import json
import os
import platform
import re
import time

from absl import app
from absl import flags
import jax
import numpy as np

from dermjax import config_lib
from dermjax import input_pipeline
from dermjax.data import augment

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Raw ISIC directory; default: synthetic data.")
flags.DEFINE_string("layout", "isic2017", "ISIC layout.")
flags.DEFINE_string("workdir", "/tmp/dermjax_benchmark_input", "Synthetic + prepared data cache.")
flags.DEFINE_integer("num_train", 64, "Synthetic training images.")
flags.DEFINE_integer("min_side", 768, "Synthetic image short-side minimum.")
flags.DEFINE_integer("max_side", 1024, "Synthetic image side maximum.")
flags.DEFINE_integer("image_size", 224, "Model input size.")
flags.DEFINE_integer("resize_size", 256, "Resize before the centre crop.")
flags.DEFINE_integer("batch_size", 8, "Global batch size.")
flags.DEFINE_integer("num_workers", 2, "grain worker processes (0: threads in this process).")
flags.DEFINE_integer("num_threads", 2, "Reader threads per process.")
flags.DEFINE_integer("num_batches", 40, "Timed batches.")
flags.DEFINE_integer("warmup", 4, "Untimed batches first (worker start-up, compilation).")
flags.DEFINE_bool("write", False, "Record the result in BENCHMARKS.md (section 'Input pipeline').")

SECTION = "## Input pipeline"


def _data_config():
  c = config_lib.data_config()
  c.layout = FLAGS.layout
  c.image_size, c.resize_size = FLAGS.image_size, FLAGS.resize_size
  c.batch_size = c.eval_batch_size = FLAGS.batch_size
  c.num_workers, c.num_threads = FLAGS.num_workers, FLAGS.num_threads
  c.sampling = "oversample"
  if FLAGS.data_dir:
    c.dir = FLAGS.data_dir
  else:
    from dermjax.data import synthetic  # pylint: disable=g-import-not-at-top
    raw = os.path.join(FLAGS.workdir, f"synthetic_{FLAGS.layout}_{FLAGS.num_train}_"
                                      f"{FLAGS.min_side}_{FLAGS.max_side}")
    if not os.path.exists(os.path.join(raw, "DONE")):
      synthetic.write_synthetic(FLAGS.layout, raw, seed=0, min_side=FLAGS.min_side,
                                max_side=FLAGS.max_side,
                                num_images={"train": FLAGS.num_train, "validation": 8, "test": 8})
      open(os.path.join(raw, "DONE"), "w").close()
    c.dir = raw
  return c


def measure(data, aug_config, num_batches, warmup):
  """-> (images/s end to end, images/s of host batches alone), over num_batches each.

  Host-alone batches are counted only after as many untimed ones, so the batches the
  workers buffered while the device step ran do not inflate the rate.
  """
  step = jax.jit(lambda b, k: augment.device_preprocess(
      b, k, mean=data.mean, std=data.std, aug_config=aug_config, train=True))
  key = jax.random.key(0)
  for i in range(warmup):
    jax.block_until_ready(step(next(data.train), jax.random.fold_in(key, i)))
  start = time.perf_counter()
  for i in range(num_batches):
    jax.block_until_ready(step(next(data.train), jax.random.fold_in(key, warmup + i)))
  full = num_batches * data.config.batch_size / (time.perf_counter() - start)
  for _ in range(num_batches):
    jax.block_until_ready(next(data.train))
  start = time.perf_counter()
  for _ in range(num_batches):
    jax.block_until_ready(next(data.train))
  host = num_batches * data.config.batch_size / (time.perf_counter() - start)
  return full, host


def _machine():
  cpus = os.cpu_count()
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      found = re.search(r"model name\s*:\s*(.*)", f.read())
    model = found.group(1).strip() if found else model
  except OSError:
    pass
  devices = jax.devices()
  return f"{cpus} CPU cores ({model}); JAX devices: {len(devices)} x {devices[0].device_kind}"


def write_section(path, text):
  """Replaces (or appends) the '## Input pipeline' section of the markdown file at `path`."""
  old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
  pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
  new_section = f"{SECTION}\n\n{text.strip()}\n\n"
  new = pattern.sub(lambda _: new_section, old) if pattern.search(old) else (
      old.rstrip("\n") + "\n\n" + new_section)
  with open(path, "w") as f:
    f.write(new.rstrip("\n") + "\n")


def main(argv):
  del argv
  c = _data_config()
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  data = input_pipeline.create_datasets(c, mesh=mesh, workdir=FLAGS.workdir)
  sizes = data.stats["splits"]["train"]
  full, host = measure(data, c.augment, FLAGS.num_batches, FLAGS.warmup)
  load = os.getloadavg()[0]
  command = "python scripts/benchmark_input.py " + " ".join(
      f"--{k}={getattr(FLAGS, k)}" for k in ("num_workers", "num_threads", "batch_size",
                                              "num_batches", "min_side", "max_side"))
  result = {
      "images_per_s": round(full, 1), "host_images_per_s": round(host, 1),
      "image_size": c.image_size, "batch_size": c.batch_size, "num_workers": c.num_workers,
      "source_image_height": sizes["height"], "source_image_width": sizes["width"],
      "machine": _machine(), "load_average_1min": round(load, 1), "command": command,
      "date": datetime.date.today().isoformat(),
  }
  print(json.dumps(result, indent=1))
  if FLAGS.write:
    text = f"""
Prepared, augmented, sharded {c.image_size} px training batches (global batch {c.batch_size}):
stored JPEGs decoded by {c.num_workers} grain worker processes (PIL draft mode), crop + resize
on host, uint8 batch put on the mesh, then the jitted `device_preprocess` (normalisation,
random rotation, flips and zoom of image and masks). Source images
{sizes['width']['min']}-{sizes['width']['max']} x {sizes['height']['min']}-{sizes['height']['max']} px
(synthetic ISIC 2017 unless `--data_dir`).

| measured | images/s |
|---|---|
| end to end (host batches + device augmentation) | **{full:.1f}** |
| host batches only (decode, crop, resize, batch, device put) | {host:.1f} |

Machine: {result['machine']}; shared with other jobs while measured (1-min load average
{load:.1f}), so these are lower bounds; {result['date']}.
Command: `{command}`
"""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "BENCHMARKS.md")
    write_section(os.path.normpath(path), text)
    print(f"wrote {os.path.normpath(path)}")


if __name__ == "__main__":
  app.run(main)
