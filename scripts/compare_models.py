"""Multi-seed model comparison on a synthetic preset: diagnosis and explanation faithfulness.

  python scripts/compare_models.py --out=runs/compare [--rows=gaze.py:thesis,attnmel.py:attnmel]
      [--seeds=0,1,2] [--difficulty=hard] [--dry_run] [-- --config.train.num_epochs=3 ...]

Each (table row, seed) trains the row's CPU-sized config with `python -m dermjax.main` in
its own process (workdir <out>/<table>_<row>/seed<seed>; a finished run, one with
results/test.json, is not run again), all rows of a layout on one shared synthetic set
(<out>/synthetic_<layout>_<difficulty>_<sizes>, drawn from seed 0, so seeds vary only the
model's initialisation and training order).
Arguments after `--` go to every run. Then it prints a Markdown table of mean +- sample std
over seeds of test AUC, AP and, per saliency map, pointing game and energy share (each
with its chance level) and deletion AUC (random-order deletion AUC), and writes
<out>/summary.json.
--rows default: every row of every configs/*.py table (slow on a CPU: pick rows).
"""

import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dermjax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def all_rows():
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    for row in config_lib.config_module(path).ROWS:
      yield os.path.basename(path), row


def run_one(table, row, seed, args, extra):
  """Trains one (row, seed) unless finished; returns its results/test.json or None."""
  config = config_lib.load_config(os.path.join(REPO, "configs", table), row)
  name = f"{table[:-3]}_{row}".replace("+", "p")
  workdir = os.path.join(args.out, name, f"seed{seed}")
  result = os.path.join(workdir, "results", "test.json")
  num = config.data.synthetic_num_images
  sizes = "default" if num is None else "-".join(str(num[k]) for k in sorted(num))
  data = os.path.join(args.out, f"synthetic_{config.data.layout}_{args.difficulty}_{sizes}")
  command = [sys.executable, "-m", "dermjax.main", f"--config={os.path.join(REPO, 'configs', table)}:{row}",
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
  out["auc"] = _stat([get(r, "diagnosis", "auc") for r in results])
  out["ap"] = _stat([get(r, "diagnosis", "ap") for r in results])
  out["random_deletion_auc"] = _stat([get(r, "explanation", "random_deletion", "deletion_auc")
                                      for r in results])
  names = sorted({m for r in results for m in (get(r, "explanation", "maps") or {})})
  for m in names:
    for key in ("pointing_game", "pointing_chance", "energy_share", "energy_chance",
                "deletion_auc"):
      out[f"{m}/{key}"] = _stat([get(r, "explanation", "maps", m, key) for r in results])
  return out


def _dig(tree, keys):
  for k in keys:
    if not isinstance(tree, dict) or k not in tree:
      return None
    tree = tree[k]
  return tree


def _fmt(stat):
  return "-" if stat is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown(summary):
  lines = ["| row | map | AUC | AP | pointing (chance) | energy (chance) | deletion AUC (random) |",
           "|---|---|---|---|---|---|---|"]
  for row, s in summary.items():
    maps = sorted({k.split("/")[0] for k in s if "/" in k}) or ["-"]
    for i, m in enumerate(maps):
      head = [row, m, _fmt(s["auc"]), _fmt(s["ap"])] if i == 0 else ["", m, "", ""]
      lines.append("| " + " | ".join(head + [
          f"{_fmt(s.get(f'{m}/pointing_game'))} ({_fmt(s.get(f'{m}/pointing_chance'))})",
          f"{_fmt(s.get(f'{m}/energy_share'))} ({_fmt(s.get(f'{m}/energy_chance'))})",
          f"{_fmt(s.get(f'{m}/deletion_auc'))} ({_fmt(s.get('random_deletion_auc'))})"]) + " |")
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
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  args = parser.parse_args(argv)
  args.out = os.path.abspath(args.out)
  rows = ([tuple(r.split(":", 1)) for r in args.rows.split(",") if r] if args.rows
          else list(all_rows()))
  seeds = [int(s) for s in args.seeds.split(",") if s]
  summary = {}
  for table, row in rows:
    results = [run_one(table, row, seed, args, extra) for seed in seeds]
    results = [r for r in results if r is not None]
    if results:
      summary[f"{table[:-3]}:{row}"] = summarize(results)
  if summary:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
      json.dump({"difficulty": args.difficulty, "seeds": seeds, "extra_args": extra,
                 "rows": summary}, f, indent=1)
    print(markdown(summary))


if __name__ == "__main__":
  main()
