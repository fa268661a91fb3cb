"""K-fold cross-validation (and repeats over seeds) through the shared trainer.

  python -m dermjax.cv --config=configs/gaze.py --workdir=W --folds=10 [--seeds=3]
      [--fold=k] [--summary_only] [--config.<field>=...]

Fold k trains with data.fold = k under W/fold_k/ (W/fold_k_seed_s/ with --seeds > 1, seed s
adding s to config.seed and config.data.seed). Which split fold k becomes follows
config.data.protocol (dermjax.input_pipeline.fold_roles): "carved_test" holds fold k out
of the training split as the validation split (a carved or official test split stays
as it is); "cv" (folds over the whole set) makes fold k the test split, fold k + 1 the
validation split that picks the checkpoint and the thresholds, and trains on the rest,
so the test/* rows of the summary are the held-out folds' mean ± std. A fold is finished
when results/<split>.json exists for every split of config.eval.splits; a rerun skips
finished folds and resumes an unfinished one from its latest checkpoint (as
dermjax.main does), so a killed cv continues where it stopped.

Several machines sharing W: start each with its own --fold=k (and the same other flags);
every process writes the summary of the folds finished so far, and
`--summary_only` rewrites it once all are done.

  W/summary.json   {"folds": [{fold, seed, workdir, <split>/<metric>: value}], "mean": ...,
                    "std": ..., "count": ..., "held_out": the split of the held-out fold}
                    over the finished folds (every scalar of results/<split>.json, the
                    diagnosis_at_validation_threshold/<rule>/* numbers of test included)
  W/summary.md     the same as tables: mean ± std per metric, then one row per fold
Synthetic data (no data.dir) is written once, to W/synthetic_<layout>, for all folds. A
prepared dataset stores its fold assignment: --folds other than the one it was prepared
with needs its own --config.data.prepared_dir.
"""

import json
import math
import os

import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dermjax import cli
from dermjax import evaluation
from dermjax import faults
from dermjax import fileio
from dermjax import input_pipeline
from dermjax import train
from dermjax import writers

FLAGS = flags.FLAGS


def fold_dir(workdir, fold, seed, seeds):
  return os.path.join(workdir, f"fold_{fold}" if seeds == 1 else f"fold_{fold}_seed_{seed}")


def fold_config(config, fold, seed, folds, workdir):
  """A copy of `config` for one fold and seed of the cross-validation rooted at `workdir`."""
  c = config.copy_and_resolve_references()
  c.data.fold, c.data.num_folds = int(fold), int(folds)
  c.seed, c.data.seed = int(config.seed) + seed, int(config.data.seed) + seed
  if c.data.dir is None and c.data.synthetic_dir is None:
    c.data.synthetic_dir = input_pipeline.synthetic_dir(c.data, workdir)
  return c


def is_finished(run_dir, config) -> bool:
  return all(os.path.isfile(os.path.join(run_dir, "results", f"{s}.json"))
             for s in config.eval.splits)


def fold_row(run_dir, splits) -> dict:
  """{<split>/<metric>: float} of a finished fold (scalars of results/<split>.json)."""
  row = {}
  for split in splits:
    with open(os.path.join(run_dir, "results", f"{split}.json")) as f:
      result = json.load(f)
    result["losses"] = {k: v for k, v in result.get("losses", {}).items() if v is not None}
    for section in ("diagnosis", "report"):
      result[section] = {k: (math.nan if v is None else v)
                         for k, v in result.get(section, {}).items()}
    row.update(evaluation.scalar_summaries(split, result))
  return row


def summarize(workdir, config, folds, seeds) -> dict:
  """Writes W/summary.json and W/summary.md over the finished folds; returns the summary.
  std is the sample standard deviation (ddof 1; 0 for one fold)."""
  rows = []
  for seed in range(seeds):
    for fold in range(folds):
      run_dir = fold_dir(workdir, fold, seed, seeds)
      if is_finished(run_dir, config):
        rows.append({"fold": fold, "seed": seed, "workdir": os.path.relpath(run_dir, workdir),
                     **fold_row(run_dir, config.eval.splits)})
  metrics = sorted({k for r in rows for k in r} - {"fold", "seed", "workdir"})
  mean, std, count = {}, {}, {}
  for name in metrics:
    values = np.array([r.get(name, math.nan) for r in rows], np.float64)
    values = values[np.isfinite(values)]
    count[name] = int(values.size)
    mean[name] = float(values.mean()) if values.size else math.nan
    std[name] = float(values.std(ddof=1)) if values.size > 1 else (0.0 if values.size else math.nan)
  summary = {"folds_expected": folds * seeds, "folds_finished": len(rows), "num_folds": folds,
             "seeds": seeds, "held_out": held_out_split(config), "mean": mean, "std": std,
             "count": count, "folds": rows}
  fileio.write_json(os.path.join(workdir, "summary.json"), summary)
  fileio.write_text(os.path.join(workdir, "summary.md"), summary_markdown(summary))
  return summary


def held_out_split(config) -> str:
  """The split each fold's held-out fold becomes (config.data.protocol)."""
  return "test" if config.data.get("protocol", "carved_test") == "cv" else "validation"


def _fmt(value):
  return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def summary_markdown(summary) -> str:
  """The summary as Markdown: metric | mean ± std | n, then one row per fold."""
  lines = [f"# Cross-validation: {summary['folds_finished']} of {summary['folds_expected']} "
           f"folds finished ({summary['num_folds']} folds x {summary['seeds']} seeds)", "",
           f"The held-out fold is each run's `{summary.get('held_out', 'validation')}` split.",
           "",
           "| metric | mean ± std | folds |", "|---|---|---|"]
  for name, mean in summary["mean"].items():
    lines.append(f"| {name} | {_fmt(mean)} ± {_fmt(summary['std'][name])} | "
                 f"{summary['count'][name]} |")
  names = list(summary["mean"])
  lines += ["", "| fold | seed | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names)]
  for row in summary["folds"]:
    lines.append(f"| {row['fold']} | {row['seed']} | " +
                 " | ".join(_fmt(row.get(n)) for n in names) + " |")
  return "\n".join(lines) + "\n"


def cross_validate(config, workdir, *, folds=None, seeds=1, only_fold=None,
                   summary_only=False) -> dict:
  """Trains the unfinished folds (all, or `only_fold`) one after another, then summarises."""
  workdir = os.path.abspath(workdir)
  folds = int(folds or config.data.num_folds)
  if only_fold is not None and not 0 <= only_fold < folds:
    raise ValueError(f"--fold={only_fold} is not in [0, {folds})")
  todo = [(s, k) for s in range(seeds) for k in range(folds)
          if only_fold is None or k == only_fold]
  progress = writers.Progress(len(todo))
  for done, (seed, fold) in enumerate(todo, 1):
    if summary_only:
      break
    run_dir = fold_dir(workdir, fold, seed, seeds)
    c = fold_config(config, fold, seed, folds, workdir)
    if is_finished(run_dir, c):
      logging.info("fold %d seed %d: finished already (%s)", fold, seed, run_dir)
    else:
      logging.info("fold %d seed %d: training in %s", fold, seed, run_dir)
      os.makedirs(run_dir, exist_ok=True)
      train.train_and_evaluate(c, run_dir)
    progress(done, f"fold {fold} seed {seed} done")
  summary = summarize(workdir, config, folds, seeds)
  logging.info("summary of %d/%d folds: %s", summary["folds_finished"], summary["folds_expected"],
               os.path.join(workdir, "summary.md"))
  return summary


def define_flags():
  """The command's flags (defined when run as a program, so the entry points can be imported
  together)."""
  flags.DEFINE_string("workdir", None, "Root folder of the cross-validation.")
  config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py).")
  flags.DEFINE_integer("folds", None, "Number of folds; default config.data.num_folds.")
  flags.DEFINE_integer("seeds", 1, "Repeats of every fold with seeds config.seed + 0..seeds-1.")
  flags.DEFINE_integer("fold", None, "Run only this fold (several machines); default all.")
  flags.DEFINE_bool("summary_only", False, "Only (re)write W/summary.json and W/summary.md.")


def main(argv):
  writers.start_command(argv, FLAGS, required=("config", "workdir"))
  cross_validate(FLAGS.config, FLAGS.workdir, folds=FLAGS.folds, seeds=FLAGS.seeds,
                 only_fold=FLAGS.fold, summary_only=FLAGS.summary_only)


def run():
  """The command: a config error ends in one line (exit 2), a failed or stopped fold in the
  trainer's one line and exit status (dermjax.main's)."""
  define_flags()
  app.run(faults.command(main), flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
