"""Trains and evaluates one experiment.

  python -m dermjax.main --config=configs/gaze.py --workdir=/tmp/gaze \
      [--config.data.dir=/data/ISIC2017] [--config.train.max_steps=100]

Without data.dir the model trains on synthetic ISIC data. Rerunning with the same workdir
resumes from its latest checkpoint (with the config it was trained with; see
--resume_with_changed_config). Errors with a known cause (a locked or unwritable workdir,
a full disk, a bad dataset, a bad flag or table row, a paper row without its pretrained
weights, divergence) end with one line on stderr and exit status != 0: 1 environment /
data, 2 usage / config, 3 divergence, 128 + N stopped by signal N (after saving `latest`).
"""

import logging as logging_lib
import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dermjax import cli
from dermjax import faults
from dermjax import pretrained
from dermjax import train
from dermjax import writers
from dermjax import xla_cpu

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and results.")
flags.DEFINE_bool("resume_with_changed_config", False,
                  "Resume even though the config differs from the one the checkpoint was "
                  "trained with (the differences are logged; the old config.json is kept).")
config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def distributed_args(environ=os.environ) -> dict:
  """jax.distributed.initialize arguments for a manual launch: $DERMJAX_NUM_PROCESSES and
  $DERMJAX_PROCESS_ID (with $JAX_COORDINATOR_ADDRESS); unset, JAX detects the cluster (TPU
  pods, SLURM, Open MPI). $DERMJAX_CPU_COLLECTIVES (e.g. "gloo") enables CPU collectives."""
  if environ.get("DERMJAX_CPU_COLLECTIVES"):
    jax.config.update("jax_cpu_collectives_implementation", environ["DERMJAX_CPU_COLLECTIVES"])
  return {k: int(environ[v]) for k, v in (("num_processes", "DERMJAX_NUM_PROCESSES"),
                                          ("process_id", "DERMJAX_PROCESS_ID")) if v in environ}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sys.stderr = faults.FilteredStderr(sys.stderr)  # After absl set up its log handler.
  writers.quiet_libraries()
  logging.get_absl_handler().addFilter(faults.QuietFailures())
  logging_lib.getLogger("asyncio").addFilter(faults.QuietFailures())
  config = FLAGS.config
  pretrained.check_pretrained(config.model)  # A paper row without its weights: stop at once.
  xla_cpu.apply(config.train.get("xla_cpu_conv"))  # Before JAX starts its backend.
  if config.train.distributed:
    jax.distributed.initialize(**distributed_args())
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  logging.info("config:\n%s", config)
  train.train_and_evaluate(config, FLAGS.workdir,
                           resume_with_changed_config=FLAGS.resume_with_changed_config)


def run():
  doing = lambda: f"writing to {os.path.abspath(FLAGS.workdir)}"
  app.run(faults.command(main, doing=doing), flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
