"""Trains and evaluates one experiment.

  python -m dermjax.main --config=configs/gaze.py --workdir=/tmp/gaze \
      [--config.data.dir=/data/ISIC2017] [--config.train.max_steps=100]

Without data.dir the model trains on synthetic ISIC data. Rerunning with the same workdir
resumes from its latest checkpoint.
"""

import logging as logging_lib
import os

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dermjax import train

QUIET_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/array_record/")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and results.")
config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO (and lower) records of chatty libraries (orbax logs every manager setting)."""

  def filter(self, record):
    return record.levelno > logging_lib.INFO or not any(
        part in record.pathname for part in QUIET_LIBRARIES)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = FLAGS.config
  if config.train.distributed:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  logging.info("config:\n%s", config)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
