"""Trains and evaluates one experiment.

  python -m dermjax.main --config=configs/gaze.py --workdir=/tmp/gaze \
      [--config.data.dir=/data/ISIC2017] [--config.train.max_steps=100]

Without data.dir the model trains on synthetic ISIC data. Rerunning with the same workdir
resumes from its latest checkpoint (with the config it was trained with; see
--resume_with_changed_config). Errors with a known cause (a locked or unwritable workdir,
a full disk, a bad dataset, an unknown config field, divergence) end with one line on
stderr and exit status != 0: 1 environment / data, 2 usage / config, 3 divergence,
128 + N stopped by signal N (after saving `latest`).
"""

import difflib
import logging as logging_lib
import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dermjax import config_lib
from dermjax import faults
from dermjax import train
from dermjax import writers
from dermjax import xla_cpu
from dermjax.data.errors import DatasetError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and results.")
flags.DEFINE_bool("resume_with_changed_config", False,
                  "Resume even though the config differs from the one the checkpoint was "
                  "trained with (the differences are logged; the old config.json is kept).")
config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def fail(message: str, exit_code: int = 1):
  """Prints `message` as the run's last line on stderr and exits with `exit_code`."""
  logging.flush()
  print(f"dermjax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def _config_arg(argv):
  """(config file path, table argument or None) from the command line, or None."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith("--config="):
      value = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      path, _, table_arg = value.partition(":")
      return path, table_arg or None
  return None


def unknown_fields(config, argv) -> list:
  """"unknown config field a.b (nearest: a.c, ...)" for each --config.a.b=... override
  that names no field of `config`."""
  names = sorted(config_lib.flatten(config_lib.config_dict(config)))
  problems = []
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, ok = config, True
    for part in path.split("."):
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError, IndexError):
        ok = False
        break
    if not ok:
      nearest = difflib.get_close_matches(path, names, n=3, cutoff=0.5) or [
          n for n in names if n.startswith(path.rsplit(".", 1)[0] + ".")][:5]
      problems.append(f"unknown config field {path}" +
                      (f" (nearest: {', '.join(nearest)})" if nearest else ""))
  return problems


def parse_flags(argv):
  """absl flag parsing; an unknown --config.<field> ends in one line naming the nearest
  valid fields instead of ml_collections' traceback."""
  try:
    return FLAGS(argv)
  except flags.Error:
    raise
  except (AttributeError, KeyError) as e:
    where = _config_arg(argv)
    problems = []
    if where is not None:
      try:
        problems = unknown_fields(config_lib.load_config(*where), argv)
      except Exception:  # pylint: disable=broad-except
        problems = []
    fail("; ".join(problems) or f"bad --config override: {e}", exit_code=2)


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
  xla_cpu.apply(config.train.get("xla_cpu_conv"))  # Before JAX starts its backend.
  if config.train.distributed:
    jax.distributed.initialize(**distributed_args())
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  logging.info("config:\n%s", config)
  try:
    train.train_and_evaluate(config, FLAGS.workdir,
                             resume_with_changed_config=FLAGS.resume_with_changed_config)
  except faults.RunError as e:
    fail(str(e), e.exit_code)
  except DatasetError as e:
    if len(e.problems) == 1:  # e.g. a data.dir that does not exist: one line.
      fail(f"{e.header}: {e.problems[0][0]}: {e.problems[0][1]}", 1)
    fail(str(e), 1)
  except Exception as e:  # pylint: disable=broad-except
    error = faults.storage_error(e, f"writing to {os.path.abspath(FLAGS.workdir)} failed")
    if error is None:
      raise
    fail(str(error), error.exit_code)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
