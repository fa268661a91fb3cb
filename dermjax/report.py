"""One comparison table and one ROC figure over finished runs and cross-validations.

  python -m dermjax.report RUN_OR_CV_DIR... --out=DIR [--split=test] [--names=a,b]

Rows = runs (a run folder of dermjax.main, or a dermjax.cv folder: its mean ± std over
folds); columns = AUC, AP, ACC, SEN, SPE, SEN@SPE95/90/85 of the melanoma score (the
papers' tables; a multiclass model's melanoma-vs-rest numbers, else its mean AUC and
accuracy; ACC / SEN / SPE at score > 0.5), then ACC / SEN / SPE at the thresholds chosen
on the validation split (`@valJ`: Youden's J, `@valSEN80`: sensitivity >= .80; the
"diagnosis_at_validation_threshold" of results/<split>.json), then every scalar of each
model's own report (seg mAP, structure accuracy, attention Jaccard, ...). Writes

  DIR/report.md        the table (mean ± std for cross-validations)
  DIR/report.csv       the same, one column per metric (+ <metric>_std for CV rows)
  DIR/roc_<split>.png  the runs' ROC curves in one figure (legend: name and AUC; a CV's
                       curve pools its folds' predictions, its AUC is the folds' mean ± std)
"""

import csv
import io
import json
import math
import os

import numpy as np
from absl import app
from absl import flags
from absl import logging

from dermjax import config_lib
from dermjax import fileio
from dermjax import runs
from dermjax import submission
from dermjax.metrics import diagnosis
from dermjax.metrics import roc

FLAGS = flags.FLAGS

# (column, diagnosis key); a multiclass model's keys carry the "melanoma_" prefix.
COLUMNS = (("AUC", "auc"), ("AP", "ap"), ("ACC", "accuracy"), ("SEN", "sensitivity"),
           ("SPE", "specificity"), ("SEN@SPE95", "sensitivity_at_specificity_95"),
           ("SEN@SPE90", "sensitivity_at_specificity_90"),
           ("SEN@SPE85", "sensitivity_at_specificity_85"))

# (column, (threshold rule, key)) of the "diagnosis_at_validation_threshold" section.
THRESHOLD_COLUMNS = tuple((f"{col}@{tag}", (rule, key))
                          for rule, tag in (("youden", "valJ"), ("sensitivity_80", "valSEN80"))
                          for col, key in (("ACC", "accuracy"), ("SEN", "sensitivity"),
                                           ("SPE", "specificity")))
FIXED_COLUMNS = tuple(c for c, _ in COLUMNS) + tuple(c for c, _ in THRESHOLD_COLUMNS)


def _load_json(path):
  with open(path) as f:
    return json.load(f)


def _number(value):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value is None:
    return None
  return float(value)


def diagnosis_columns(diagnosis: dict) -> dict:
  """{column: diagnosis key} present in a result's diagnosis section."""
  prefix = "" if "auc" in diagnosis else "melanoma_" if "melanoma_auc" in diagnosis else None
  if prefix is None:  # Multiclass without a melanoma class.
    return {"AUC": "mean_auc", "ACC": "accuracy"}
  return {col: prefix + key for col, key in COLUMNS if prefix + key in diagnosis}


def run_row(run_dir, split) -> dict:
  """{column: value} of one run's results/<split>.json."""
  result = _load_json(os.path.join(run_dir, "results", f"{split}.json"))
  diag = result.get("diagnosis", {})
  row = {col: _number(diag.get(key)) for col, key in diagnosis_columns(diag).items()}
  at_validation = result.get(diagnosis.AT_VALIDATION, {})
  for col, (rule, key) in THRESHOLD_COLUMNS:
    if key in at_validation.get(rule, {}):
      row[col] = _number(at_validation[rule][key])
  for key, value in result.get("report", {}).items():
    if _number(value) is not None:
      row[key] = _number(value)
  return row


def cv_row(cv_dir, split) -> tuple[dict, dict]:
  """({column: mean}, {column: std}) of a cross-validation's summary.json."""
  summary = _load_json(os.path.join(cv_dir, "summary.json"))
  mean, std = summary["mean"], summary["std"]
  diag = {k.split("/", 1)[1]: v for k, v in mean.items()
          if k.startswith(f"{split}/") and not k.startswith(f"{split}/report/")}
  means, stds = {}, {}
  for col, key in diagnosis_columns(diag).items():
    means[col], stds[col] = mean.get(f"{split}/{key}"), std.get(f"{split}/{key}")
  for col, (rule, key) in THRESHOLD_COLUMNS:
    name = f"{split}/{diagnosis.AT_VALIDATION}/{rule}/{key}"
    if name in mean:
      means[col], stds[col] = mean[name], std[name]
  for k in mean:
    if k.startswith(f"{split}/report/"):
      name = k.split("/", 2)[2]
      means[name], stds[name] = mean[k], std[k]
  return means, stds


def melanoma_scores(run_dir, split):
  """(scores [N], labels [N]) of the ROC of a run's predictions/<split>.npz, or None."""
  path = os.path.join(run_dir, "predictions", f"{split}.npz")
  if not os.path.isfile(path):
    return None
  data = np.load(path)
  scores = data["scores"]
  if scores.ndim == 1:
    return scores, data["labels"]
  names = _class_names(run_dir)
  hits = [i for i, n in enumerate(names) if n in submission.MELANOMA_NAMES]
  if not hits:
    return None
  known = data["melanoma"] >= 0
  return scores[known, hits[0]], data["melanoma"][known]


def _class_names(run_dir):
  return runs.normalization(run_dir, config_lib.load_run_config(run_dir))["class_names"]


def _cv_fold_dirs(cv_dir):
  summary = _load_json(os.path.join(cv_dir, "summary.json"))
  return [os.path.join(cv_dir, row["workdir"]) for row in summary["folds"]]


def is_cv(path) -> bool:
  return os.path.isfile(os.path.join(path, "summary.json"))


def build_report(dirs, out_dir, *, split="test", names=None) -> dict:
  """Writes DIR/report.md, report.csv and roc_<split>.png for `dirs`; returns
  {"rows": {name: {column: value}}, "std": {name: {column: std}}, "roc": path or None}."""
  names = list(names or [os.path.basename(os.path.normpath(d)) for d in dirs])
  if len(names) != len(dirs) or len(set(names)) != len(names):
    raise ValueError(f"need one distinct name per folder, got {names} for {len(dirs)} folders")
  rows, stds, curves, auc_labels = {}, {}, {}, {}
  for name, path in zip(names, dirs):
    if is_cv(path):
      rows[name], stds[name] = cv_row(path, split)
      parts = [melanoma_scores(d, split) for d in _cv_fold_dirs(path)]
      parts = [p for p in parts if p is not None]
      scores = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])) \
          if parts else None
      if rows[name].get("AUC") is not None:
        auc_labels[name] = f"AUC {rows[name]['AUC']:.3f} ± {stds[name].get('AUC') or 0:.3f}"
    else:
      rows[name], stds[name] = run_row(path, split), {}
      scores = melanoma_scores(path, split)
    if scores is not None and len(np.unique(scores[1])) == 2:
      curves[name] = roc.roc_points(*scores)
  columns = [c for c in FIXED_COLUMNS if any(c in r for r in rows.values())]
  columns += sorted({k for r in rows.values() for k in r} - set(columns))
  fileio.write_text(os.path.join(out_dir, "report.md"), markdown(rows, stds, columns, split))
  fileio.write_text(os.path.join(out_dir, "report.csv"), csv_text(rows, stds, columns))
  roc_path = None
  if curves:
    roc_path = roc.plot_roc_curves(curves, os.path.join(out_dir, f"roc_{split}.png"),
                                   title=f"ROC, {split} split", auc_labels=auc_labels)
  logging.info("report of %d runs -> %s", len(rows), out_dir)
  return {"rows": rows, "std": stds, "columns": columns, "roc": roc_path}


def _cell(value, std=None):
  if value is None or not math.isfinite(value):
    return ""
  return f"{value:.3f}" + (f" ± {std:.3f}" if std is not None and math.isfinite(std) else "")


def markdown(rows, stds, columns, split) -> str:
  lines = [f"# Comparison on the {split} split", "",
           "| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for name, row in rows.items():
    lines.append(f"| {name} | " + " | ".join(_cell(row.get(c), stds[name].get(c))
                                             for c in columns) + " |")
  return "\n".join(lines) + "\n"


def csv_text(rows, stds, columns) -> str:
  with_std = [c for c in columns if any(c in s for s in stds.values())]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["run", *columns, *(f"{c}_std" for c in with_std)])
  for name, row in rows.items():
    value = lambda v: "" if v is None or not math.isfinite(v) else repr(float(v))
    writer.writerow([name, *(value(row.get(c)) for c in columns),
                     *(value(stds[name].get(c)) for c in with_std)])
  return out.getvalue()


def define_flags():
  """The command's flags (defined when run as a program, so the entry points can be imported
  together)."""
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_string("split", "test", "Split to compare.")
  flags.DEFINE_list("names", None, "Row names (default: the folders' names).")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more run or cross-validation folders")
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  build_report(argv[1:], FLAGS.out, split=FLAGS.split, names=FLAGS.names)


if __name__ == "__main__":
  define_flags()
  app.run(main)
