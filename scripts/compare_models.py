"""Multi-seed model comparison on a synthetic preset: diagnosis and explanation faithfulness.

  python scripts/compare_models.py --out=runs/compare [--rows=gaze.py:thesis,attnmel.py:attnmel]
      [--seeds=0,1,2] [--difficulty=hard] [--num_images=240,60,120] [--dry_run]
      [--launcher="flock -s /tmp/dermjax-cpu.lock"] [-- --config.train.num_epochs=3 ...]

A row may carry its own overrides after "@": gaze.py:thesis@data.evidence_ablation=blank
(values parsed as Python literals where they parse, else kept as strings).

Each (table row, seed) trains the row's CPU-sized config with `python -m dermjax.main` in
its own process (workdir <out>/<table>_<row>/seed<seed>; a finished run, one with
results/test.json, is not run again), all rows of a layout on one shared synthetic set
(<out>/synthetic_<layout>_<difficulty>_<sizes>, drawn from seed 0, so seeds vary only the
model's initialisation and training order). --num_images=train,validation,test gives every
table the same split sizes, so all rows of a layout share one set (each keeps its own image
size); without it each table keeps its own synthetic sizes. The row's config, with these
settings, is written as a config file <out>/configs/<name>.py that the run loads.
Arguments after `--` go to every run; --launcher is a command every run starts under
(e.g. a lock shared with other jobs, taken per run). A row that its table's PRETRAINED_FROM maps to another
row (CIN's A rows: {"A": "lesion_attention", ...}) trains from that row's run of the same
seed: the script runs it first (its plain table row, same data and `--` arguments; workdir
<out>/<table>_<row>/seed<seed>, reused when finished) and passes its workdir as
--config.model.pretrained, unless the row sets model.pretrained itself. Then it prints a Markdown table of mean +- sample std
over seeds of test AUC, AP and, per saliency map, pointing game and energy share (each
with its chance level) and deletion AUC (random-order deletion AUC), the same three
chance-corrected per seed (maps of different sizes have different chance levels), and the
pairs of rows whose means differ by more than the sum of their seed stds; writes
<out>/summary.json.
--rows default: every row of every configs/*.py table (slow on a CPU: pick rows).
"""

import argparse
import ast
import glob
import json
import os
import shlex
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dermjax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dermjax import fileio  # pylint: disable=g-import-not-at-top,wrong-import-position


def all_rows():
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    for row in config_lib.config_module(path).ROWS:
      yield os.path.basename(path), row


def parse_row(spec):
  """"table.py:row[@section.field=value...]" -> (table, row, {field: value}); ValueError
  naming the spec when it is not of that form."""
  table, sep, rest = spec.partition(":")
  row, *settings = rest.split("@")
  if not sep or not table.endswith(".py") or not row or not all("=" in x for x in settings):
    raise ValueError(f"{spec!r}: expected table.py:row[@section.field=value...]")
  overrides = {}
  for setting in settings:
    key, value = setting.split("=", 1)
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return table, row, overrides


def row_name(table, row, overrides):
  name = f"{table[:-3]}:{row}"
  return name + "".join(f"@{k.split('.')[-1]}={v}" for k, v in overrides.items())


CONFIG_FILE = """# Written by scripts/compare_models.py: {name}
from dermjax import config_lib


def get_config():
  config = config_lib.load_config({table!r}, {row!r})
  return config_lib.set_fields(config, {fields!r})
"""


def prepare_row(table, row, overrides, args):
  """Writes the row's config file (its overrides and --num_images) -> (run name, config
  file, synthetic data folder)."""
  table_path = os.path.join(REPO, "configs", table)
  name = row_name(table, row, overrides)
  for old, new in ((":", "_"), ("+", "p"), ("@", "__"), ("=", "_"), ("/", "_")):
    name = name.replace(old, new)
  fields = dict(overrides)
  if args.num_images:
    fields["data.synthetic_num_images"] = dict(zip(
        ("train", "validation", "test"), (int(n) for n in args.num_images.split(","))))
  config = config_lib.set_fields(config_lib.load_config(table_path, row), fields)
  config_file = os.path.join(args.out, "configs", name + ".py")
  fileio.write_text(config_file, CONFIG_FILE.format(name=name, table=table_path, row=row,
                                                    fields=fields))
  num = config.data.synthetic_num_images
  sizes = "default" if num is None else "-".join(str(num[k]) for k in sorted(num))
  age = config.data.get("synthetic_age_signal")
  sizes += "" if age is None else f"_age_signal_{bool(age)}"   # another set (ZooME's metadata)
  data = os.path.join(args.out, f"synthetic_{config.data.layout}_{args.difficulty}_{sizes}")
  return name, config_file, data


def workdir_of(prepared, seed, args):
  return os.path.join(args.out, prepared[0], f"seed{seed}")


def run_one(prepared, seed, args, extra):
  """Trains one (row, seed) unless finished; returns its results/test.json or None."""
  _, config_file, data = prepared
  workdir = workdir_of(prepared, seed, args)
  result = os.path.join(workdir, "results", "test.json")
  command = [*shlex.split(args.launcher), sys.executable, "-m", "dermjax.main",
             f"--config={config_file}",
             f"--workdir={workdir}", f"--config.seed={seed}", f"--config.data.seed={seed}",
             f"--config.data.synthetic_difficulty={args.difficulty}",
             f"--config.data.synthetic_dir={data}", *extra]
  if not os.path.exists(result):
    print(" ".join(command), flush=True)
    if args.dry_run:
      return None
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(command, check=True, env=env, cwd=REPO)
  with open(result) as f:
    return json.load(f)


def pretrained_from(table, row, overrides):
  """The row of `table` this row trains from (its PRETRAINED_FROM), or None."""
  if "model.pretrained" in overrides:
    return None
  module = config_lib.config_module(os.path.join(REPO, "configs", table))
  return getattr(module, "PRETRAINED_FROM", {}).get(row)


def run_row(table, row, overrides, seeds, args, extra):
  """Runs one row over `seeds` (its PRETRAINED_FROM row first, per seed) -> [test.json]."""
  prepared = prepare_row(table, row, overrides, args)
  source = pretrained_from(table, row, overrides)
  source = prepare_row(table, source, {}, args) if source else None
  results = []
  for seed in seeds:
    chained = []
    if source:
      run_one(source, seed, args, extra)
      chained = [f"--config.model.pretrained={workdir_of(source, seed, args)}"]
    results.append(run_one(prepared, seed, args, extra + chained))
  return [r for r in results if r is not None]


def _stat(values):
  values = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
  if not values.size:
    return None
  return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1
          else 0.0, "n": int(values.size)}


def summarize(results):
  """[results/test.json of each seed] -> {metric: {mean, std, n}}."""
  out = {}
  get = lambda r, *keys: _dig(r, keys)
  # Binary heads report "auc"; softmax heads (AttnMel's two classes) melanoma-vs-rest.
  score = lambda r, key: (get(r, "diagnosis", key) if get(r, "diagnosis", key) is not None
                          else get(r, "diagnosis", f"melanoma_{key}"))
  out["auc"] = _stat([score(r, "auc") for r in results])
  out["auc_per_seed"] = [score(r, "auc") for r in results]
  out["ap"] = _stat([score(r, "ap") for r in results])
  if any(get(r, "report", "jaccard") is not None for r in results):   # a segmenter (CIN stage 1)
    out["jaccard"] = _stat([get(r, "report", "jaccard") for r in results])
  out["random_deletion_auc"] = _stat([get(r, "explanation", "random_deletion", "deletion_auc")
                                      for r in results])
  names = sorted({m for r in results for m in (get(r, "explanation", "maps") or {})})
  for m in names:
    for key in ("pointing_game", "pointing_chance", "energy_share", "energy_chance",
                "deletion_auc"):
      out[f"{m}/{key}"] = _stat([get(r, "explanation", "maps", m, key) for r in results])
    # Chance-corrected, per seed (maps of different sizes have different chance levels):
    # pointing above chance, energy share over the evidence's area share, and how far the
    # deletion curve falls below the random-order one (all > 0: better than chance).
    for key, (a, b, op) in CORRECTED.items():
      b = tuple(m if k is None else k for k in b)   # None: this map's name
      out[f"{m}/{key}"] = _stat([_combine(op, get(r, "explanation", "maps", m, a),
                                          get(r, "explanation", *b)) for r in results])
  return out


CORRECTED = {
    "pointing_above_chance": ("pointing_game", ("maps", None, "pointing_chance"), "sub"),
    "energy_over_chance": ("energy_share", ("maps", None, "energy_chance"), "div"),
    "deletion_below_random": ("deletion_auc", ("random_deletion", "deletion_auc"), "rsub"),
}
SEPARATED_KEYS = ("auc", "ap", *CORRECTED)


def _combine(op, a, b):
  if a is None or b is None:
    return None
  return {"sub": a - b, "div": a / b if b else None, "rsub": b - a}[op]


def separations(summary):
  """Pairs of rows whose means on one metric differ by more than the sum of their seed stds
  (mean +- std intervals apart): [(metric, row a, row b, mean a, mean b)], largest gap
  first. Saliency metrics compare (row, map) entries."""
  entries = {}
  for row, stats in summary.items():
    for key, stat in stats.items():
      if not isinstance(stat, dict):
        continue
      map_name, metric = key.split("/") if "/" in key else ("", key)
      if metric in SEPARATED_KEYS and stat["n"] > 1:
        entries.setdefault(metric, []).append((f"{row} {map_name}".strip(), stat))
  out = []
  for metric, items in entries.items():
    for i, (a, sa) in enumerate(items):
      for b, sb in items[i + 1:]:
        if abs(sa["mean"] - sb["mean"]) > sa["std"] + sb["std"]:
          hi, lo = ((a, sa), (b, sb)) if sa["mean"] >= sb["mean"] else ((b, sb), (a, sa))
          out.append((metric, hi[0], lo[0], hi[1]["mean"], lo[1]["mean"],
                      hi[1]["mean"] - hi[1]["std"] - lo[1]["mean"] - lo[1]["std"]))
  out.sort(key=lambda t: -t[-1])
  return [t[:5] for t in out]


def _dig(tree, keys):
  for k in keys:
    if not isinstance(tree, dict) or k not in tree:
      return None
    tree = tree[k]
  return tree


def _fmt(stat):
  if stat is None:
    return "-"
  return (f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["n"] > 1
          else f"{stat['mean']:.3f} (1 seed)")


def _maps(stats):
  """The saliency map names of one row's summary."""
  return sorted({k.split("/")[0] for k in stats if "/" in k})


def markdown(summary):
  lines = ["| row | map | AUC | AP | pointing (chance) | energy (chance) | deletion AUC (random) |",
           "|---|---|---|---|---|---|---|"]
  for row, s in summary.items():
    maps = _maps(s) or ["-"]
    for i, m in enumerate(maps):
      auc = (_fmt(s["auc"]) if s.get("auc") or "jaccard" not in s
             else f"Jaccard {_fmt(s['jaccard'])}")
      head = [row, m, auc, _fmt(s["ap"])] if i == 0 else ["", m, "", ""]
      lines.append("| " + " | ".join(head + [
          f"{_fmt(s.get(f'{m}/pointing_game'))} ({_fmt(s.get(f'{m}/pointing_chance'))})",
          f"{_fmt(s.get(f'{m}/energy_share'))} ({_fmt(s.get(f'{m}/energy_chance'))})",
          f"{_fmt(s.get(f'{m}/deletion_auc'))} ({_fmt(s.get('random_deletion_auc'))})"]) + " |")
  lines += ["", "Chance-corrected, per seed (> 0, > 1, > 0: better than chance):", "",
            "| row | map | pointing - chance | energy / chance | random - deletion AUC |",
            "|---|---|---|---|---|"]
  for row, s in summary.items():
    for m in _maps(s):
      lines.append(f"| {row} | {m} | " + " | ".join(_fmt(s.get(f"{m}/{k}")) for k in CORRECTED)
                   + " |")
  return "\n".join(lines)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--rows", default="", help="table.py:row,... (default: every row)")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--difficulty", default="hard")
  parser.add_argument("--num_images", default="",
                      help="train,validation,test sizes shared by every table (default: each its own)")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  parser.add_argument("--launcher", default="",
                      help="command prefix of every run, e.g. 'flock -s /tmp/dermjax-cpu.lock'")
  args = parser.parse_args(argv)
  args.out = os.path.abspath(args.out)
  specs = [r for r in args.rows.split(",") if r]
  rows, problems = [], []
  for spec in specs:
    try:
      rows.append(parse_row(spec))
    except ValueError as e:
      problems.append(str(e))
  if problems:
    parser.error("--rows: " + "; ".join(problems))
  rows = rows if specs else [(table, row, {}) for table, row in all_rows()]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  summary = {}
  for table, row, overrides in rows:
    results = run_row(table, row, overrides, seeds, args, extra)
    if results:
      summary[row_name(table, row, overrides)] = summarize(results)
  if summary:
    separated = separations(summary)
    fileio.write_json(os.path.join(args.out, "summary.json"), {
        "difficulty": args.difficulty, "seeds": seeds, "extra_args": extra,
        "num_images": args.num_images, "rows": summary, "separations": separated})
    print(markdown(summary))
    print("\nSeparated by more than the seed std (mean - std of one above mean + std of the other):")
    for metric, a, b, mean_a, mean_b in separated:
      print(f"  {metric}: {a} {mean_a:.3f} > {b} {mean_b:.3f}")


if __name__ == "__main__":
  main()
