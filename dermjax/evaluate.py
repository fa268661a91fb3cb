"""Evaluates a finished run's checkpoint without training.

  python -m dermjax.evaluate --workdir=W [--split=test] [--out=DIR] [--tta=8]
      [--config.data.dir=/data/ISIC2017 --config.data.layout=isic2017 ...]

Loads W/config.json (any field can be overridden as --config.<field>=..., e.g. another
prepared dataset) and the checkpoint the trainer evaluates at the end (best by
train.checkpoint_metric), and writes what the end of training writes (dermjax.evaluation):
DIR/results/<split>.json, DIR/predictions/<split>.npz (+ the ISIC submission CSV),
DIR/explanations/<split>/. DIR defaults to W/evaluate, so the run's own files stay as
they are; on the run's own data it reproduces W/results/<split>.json. Inputs are normalised
as the run was trained (W/results/normalization.json: its mode, mean and std), whatever
dataset is evaluated. The thresholds applied to test ("diagnosis_at_validation_threshold")
are chosen on the validation split: evaluated in the same call when --split names it, else
the run's own (W/results/validation.json, written at the end of training; they are part of
the trained run).
Without W/config.json the config stored with the checkpoint is used; a W that is no finished
run, or whose config.json names another model than its checkpoint's, ends in one line
(exit 2).
"""

import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dermjax import cli
from dermjax import config_lib
from dermjax import evaluation
from dermjax import faults
from dermjax import input_pipeline
from dermjax import runs
from dermjax import steps
from dermjax import writers

FLAGS = flags.FLAGS


def evaluate(workdir, out_dir=None, splits=None, config=None) -> dict:
  """Evaluates the run in `workdir` (its config, or `config`) on `splits`; writes under
  `out_dir` (default <workdir>/evaluate); returns {split: result}."""
  workdir = os.path.abspath(workdir)
  run = runs.load_run(workdir, config)
  config = run.config
  out_dir = os.path.abspath(out_dir or os.path.join(workdir, "evaluate"))
  splits = tuple(splits or config.eval.splits)
  mesh = steps.create_mesh()
  # Data paths (synthetic data) resolve against the run's workdir, as in training; inputs
  # are normalised as the run was trained.
  datasets = input_pipeline.create_datasets(
      config.data, mesh=mesh, workdir=workdir,
      normalization={"mode": run.normalization, "mean": run.mean, "std": run.std})
  stats_fn = getattr(run.model_lib, "loss_stats", None)
  loss_stats = stats_fn(datasets.stats, config) if stats_fn else {}
  state = steps.TrainState(step=jax.numpy.asarray(run.step, jax.numpy.int32),
                           params=run.variables["params"],
                           batch_stats=run.variables.get("batch_stats", {}), opt_state=None,
                           rng=jax.random.PRNGKey(config.seed))
  state = jax.device_put(state, steps.replicated(mesh))
  eval_step = jax.jit(
      steps.make_eval_step(run.module, run.model_lib, config, loss_stats, datasets.mean,
                           datasets.std),
      in_shardings=(steps.replicated(mesh), input_pipeline.batch_sharding(mesh)))
  logging.info("evaluating %s (step %d) on %s -> %s", workdir, run.step, list(splits), out_dir)
  return evaluation.evaluate_splits(config, out_dir, state, datasets, run.model_lib, run.module,
                                    loss_stats, eval_step, splits, step=run.step,
                                    thresholds=evaluation.run_thresholds(workdir))


def define_config_flag(argv):
  """--config: the config of the run named by --workdir in argv (config.json, else the one
  its checkpoint stores; base_config() without --workdir), so that --config.<field>=value
  overrides it. A folder that is no dermjax run ends here in one line (exit status 2)."""
  workdir = None
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    elif arg == "--workdir" and i + 1 < len(argv):
      workdir = argv[i + 1]
  config = config_lib.base_config()
  if workdir:
    try:
      config = config_lib.load_run_config(os.path.abspath(workdir))
    except faults.RunError as e:
      faults.fail(str(e), e.exit_code)
  config_flags.DEFINE_config_dict("config", config, "The run's config (<workdir>/config.json); "
                                  "override fields as --config.<field>=value.")


def define_flags():
  """The command's flags (defined when run as a program, so the entry points can be imported
  together)."""
  flags.DEFINE_string("workdir", None, "A finished dermjax run (python -m dermjax.main).")
  flags.DEFINE_list("split", None, "Splits to evaluate; default the run's config.eval.splits.")
  flags.DEFINE_string("out", None, "Output folder; default <workdir>/evaluate.")
  flags.DEFINE_integer("tta", None, "Dihedral views to average (1 or 8); default config.eval.tta.")


def main(argv):
  writers.start_command(argv, FLAGS, required=("workdir",))
  config = FLAGS.config
  if FLAGS.tta is not None:
    config.eval.tta = FLAGS.tta
  evaluate(FLAGS.workdir, FLAGS.out, FLAGS.split, config)


def run(argv=None):
  argv = sys.argv if argv is None else argv
  define_flags()
  define_config_flag(argv)
  app.run(faults.command(main), argv=argv, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
