"""Runs a finished run's model on image files.

  python -m dermjax.predict --workdir=W --images=PATH[,PATH...] --out=DIR
      [--tta=8] [--format=isic2017|auto] [--batch_size=32] [--explain=true]

PATH: JPEG/PNG files or folders (searched recursively), any number, size and aspect. The
run's best checkpoint and its own preprocessing (config.json's crop/resize and source copy,
the normalisation recorded in results/normalization.json) are used, in fixed-size batches (the last one padded: one compilation).
Writes:

  DIR/predictions.csv          image, melanoma (when the model has a melanoma class), the
                               other class probabilities
  DIR/errors.csv               image path, reason: files that could not be read (all
                               others are still predicted)
  DIR/explanations/            the model's explain() output for every image
  DIR/submission_<format>.csv  with --format: the ISIC challenge file (dermjax.submission)

Before the model is loaded: a PATH that does not exist ends in one line (exit status 2),
inputs without any JPEG/PNG in one line naming the other files found (exit status 1);
other files beside images are skipped and logged. A --workdir that is no finished run ends
in one line too (dermjax.runs.load_run).
"""

import concurrent.futures
import csv
import io
import os

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from dermjax import faults
from dermjax import fileio
from dermjax import input_pipeline
from dermjax import runs
from dermjax import steps
from dermjax import submission
from dermjax import tta as tta_lib
from dermjax import writers
from dermjax.data import augment
from dermjax.data import loader
from dermjax.data import schema
from dermjax.metrics import diagnosis

EXTENSIONS = (".jpg", ".jpeg", ".png")
SKIPPED_SUFFIXES = ("_superpixels.png",)   # ISIC 2016/2017 ship these beside the images.

FLAGS = flags.FLAGS


def list_files(paths) -> tuple[list[str], list[str]]:
  """Files and folders -> (sorted image files, sorted other files found in the folders).
  Folders are searched recursively for EXTENSIONS (without ISIC's *_superpixels.png, which
  are neither); files given by name are taken whatever their name. A missing path raises
  FileNotFoundError."""
  found, skipped = [], []
  for path in paths:
    if os.path.isdir(path):
      for root, _, names in os.walk(path):
        for n in names:
          if n.lower().endswith(EXTENSIONS):
            if not n.lower().endswith(SKIPPED_SUFFIXES):
              found.append(os.path.join(root, n))
          else:
            skipped.append(os.path.join(root, n))
    elif os.path.exists(path):
      found.append(path)
    else:
      raise FileNotFoundError(f"no such image file or folder: {path}")
  unique = lambda files: sorted(dict.fromkeys(os.path.abspath(p) for p in files))
  return unique(found), unique(skipped)


def list_images(paths) -> list[str]:
  """The image files of list_files."""
  return list_files(paths)[0]


def check_images(paths) -> list[str]:
  """list_files for the command: RunError for a missing path (exit status 2) or when no
  image is found (1, naming the files skipped); the skipped files are logged."""
  try:
    images, skipped = list_files(paths)
  except FileNotFoundError as e:
    raise faults.RunError(str(e), exit_code=2) from None
  shown = ", ".join(os.path.basename(p) for p in skipped[:10]) + (
      f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
  if not images:
    raise faults.RunError(f"no images ({', '.join(EXTENSIONS)}) found in {', '.join(paths)}"
                          + (f"; skipped {len(skipped)} other file(s): {shown}" if skipped
                             else ""), exit_code=1)
  if skipped:
    logging.warning("skipped %d file(s) that are not %s images: %s", len(skipped),
                    "/".join(EXTENSIONS), shown)
  return images


def image_ids(paths) -> list[str]:
  """File stems as ids (ISIC ids are file stems); stems that repeat get their path instead."""
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  counts = {s: stems.count(s) for s in set(stems)}
  return [s if counts[s] == 1 else os.path.splitext(p)[0].lstrip("/").replace("/", "__")
          for s, p in zip(stems, paths)]


def load_image(path, data_config) -> dict:
  """An image file -> {"image": uint8 [S, S, 3]} (+ "source_image" [R, R, 3] with
  data.source_size R), cropped and resized as the input pipeline does for the prepared
  dataset (loader.decode_jpeg_for + host_images). Raises on a bad file."""
  c = data_config
  size, source_size = int(c.image_size), loader.check_source_size(c)
  box_fn = lambda h, w: loader.crop_box(h, w, image_size=size,
                                                resize_size=int(c.resize_size), crop=c.crop,
                                                crop_fraction=float(c.crop_fraction))
  with open(path, "rb") as f:
    data = f.read()
  image, box = loader.decode_jpeg_for(data, box_fn, max(size, source_size))
  return loader.host_images(image, box, size, source_size)


def _read(path, data_config):
  try:
    return load_image(path, data_config), None
  except Exception as e:  # pylint: disable=broad-except  (any bad file becomes an errors.csv row)
    return None, f"{type(e).__name__}: {e}"


def make_predict_step(run, tta: int):
  """(variables, host batch) -> model outputs (numpy-able), the run's on-device
  normalisation first; with tta > 1, "logits" average the dihedral views."""
  module = tta_lib.TTAModule(run.module, tta) if tta > 1 else run.module
  mean, std = run.mean, run.std

  def step(variables, batch):
    batch = augment.device_preprocess(batch, None, mean=mean, std=std, aug_config=None,
                                      train=False)
    return module.apply(variables, batch, train=False)

  return step


def probability_columns(logits, class_names) -> dict:
  """logits [N, K] -> {"melanoma" (if a class is the melanoma score), other classes: [N]}."""
  by_class = submission.class_probabilities(diagnosis.probabilities(logits), class_names)
  mel = [n for n in by_class if n in submission.MELANOMA_NAMES]
  out = {"melanoma": by_class[mel[0]]} if mel else {}
  out.update({n: v for n, v in by_class.items() if n not in mel[:1]})
  return out


def predict(workdir, images, out_dir, *, tta=None, fmt="", batch_size=None, explain=True) -> dict:
  """Runs the run in `workdir` on `images` (files / folders); writes DIR/predictions.csv,
  errors.csv, explanations/ and the submission file. Returns {"ids", "probabilities" {column:
  [N]}, "errors" [(path, reason)]}."""
  paths = check_images(images)
  run = runs.load_run(workdir)
  config = run.config
  tta = int(config.eval.get("tta", 1) if tta is None else tta)
  ids = image_ids(paths)
  mesh = steps.create_mesh()
  batch_size = int(batch_size or config.data.eval_batch_size)
  batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
  rep = steps.replicated(mesh)
  sharding = input_pipeline.batch_sharding(mesh)
  step = jax.jit(make_predict_step(run, tta), in_shardings=(rep, sharding))
  variables = jax.device_put(run.variables, rep)
  explain_fn = getattr(run.model_lib, "explain", None) if explain else None
  explain_dir = os.path.join(out_dir, "explanations")

  num_batches = -(-len(paths) // batch_size)
  logging.info("predicting %d images in %d batches of %d (TTA %d) with %s step %d", len(paths),
               num_batches, batch_size, tta, run.workdir, run.step)
  progress = writers.Progress(num_batches)
  done_ids, chunks, errors = [], [], []
  pool = concurrent.futures.ThreadPoolExecutor(max(int(config.data.num_threads), 1))
  submit = lambda b: [pool.submit(_read, p, config.data)
                      for p in paths[b * batch_size:(b + 1) * batch_size]]
  pending = submit(0) if num_batches else []
  for b in range(num_batches):
    read = [f.result() for f in pending]
    pending = submit(b + 1) if b + 1 < num_batches else []
    batch = schema.padding_batch(int(config.data.image_size), batch_size,
                                 source_size=int(config.data.get("source_size", 0)))
    rows = []
    for j, (images, error) in enumerate(read):
      i = b * batch_size + j
      if error is not None:
        errors.append((paths[i], error))
        logging.warning("cannot read %s: %s", paths[i], error)
        continue
      r = len(rows)
      for name, image in images.items():
        batch[name][r] = image
      batch["valid"][r], batch["index"][r] = 1.0, i
      rows.append(i)
    if rows:
      outputs = jax.tree.map(np.asarray, step(variables, batch))
      if "logits" in outputs:
        chunks.append(outputs["logits"][:len(rows)].astype(np.float32))
      done_ids += [ids[i] for i in rows]
      if explain_fn is not None:
        keep = lambda x: x[:len(rows)]
        explain_fn(jax.tree.map(keep, outputs), jax.tree.map(keep, batch),
                   batch["image"][:len(rows)], [ids[i] for i in rows], config, explain_dir)
    if b + 1 == num_batches or (b + 1) % max(num_batches // 20, 1) == 0:
      progress(b + 1, f"batches; {len(done_ids)} images predicted, {len(errors)} errors")
  pool.shutdown()

  columns = {}
  if chunks:
    columns = probability_columns(np.concatenate(chunks), run.class_names)
    fileio.write_text(os.path.join(out_dir, "predictions.csv"),
                      submission.csv_text(done_ids, columns))
    target = submission.format_for(fmt, config.data.layout)
    if target:
      probs = diagnosis.probabilities(np.concatenate(chunks))
      submission.write(os.path.join(out_dir, f"submission_{target}.csv"), target, done_ids,
                       probs, run.class_names)
  elif paths and len(errors) < len(paths):
    logging.warning("%s has no logits output: no predictions.csv (explanations only)",
                    config.model.name)
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["image", "error"])
  writer.writerows(errors)
  fileio.write_text(os.path.join(out_dir, "errors.csv"), text.getvalue())
  logging.info("wrote %s: %d predictions, %d errors", out_dir, len(done_ids), len(errors))
  return {"ids": done_ids, "probabilities": columns, "errors": errors}


def define_flags():
  """The command's flags (defined when run as a program, so the entry points can be imported
  together)."""
  flags.DEFINE_string("workdir", None, "A finished dermjax run (python -m dermjax.main).")
  flags.DEFINE_list("images", None, "Image files and/or folders (recursive), comma-separated.")
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_integer("tta", None, "Dihedral views to average (1 or 8); default config.eval.tta.")
  flags.DEFINE_string("format", "", "ISIC submission format (dermjax.submission.FORMATS, 'auto': "
                      "the run's dataset's) written as DIR/submission_<format>.csv; '' none.")
  flags.DEFINE_integer("batch_size", None, "Images per batch; default config.data.eval_batch_size.")
  flags.DEFINE_bool("explain", True, "Write the model's explanations for every image.")


def main(argv):
  writers.start_command(argv, FLAGS, required=("workdir", "images", "out"))
  predict(FLAGS.workdir, FLAGS.images, FLAGS.out, tta=FLAGS.tta, fmt=FLAGS.format,
          batch_size=FLAGS.batch_size, explain=FLAGS.explain)


def run():
  define_flags()
  app.run(faults.command(main))


if __name__ == "__main__":
  run()
