"""scripts/compare_models.py: row specs, the generated config files, seed statistics and the
"differ by more than the seed std" check (the runs themselves are RESULTS.md's)."""

import importlib.util
import os
import runpy

import numpy as np
import pytest

from dermjax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def compare():
  spec = importlib.util.spec_from_file_location(
      "compare_models", os.path.join(REPO, "scripts", "compare_models.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_parse_row(compare):
  assert compare.parse_row("cin.py:A+F") == ("cin.py", "A+F", {})
  table, row, overrides = compare.parse_row(
      "gaze.py:thesis@data.evidence_ablation=blank@train.num_epochs=6")
  assert (table, row) == ("gaze.py", "thesis")
  assert overrides == {"data.evidence_ablation": "blank", "train.num_epochs": 6}
  assert compare.row_name(table, row, overrides) == (
      "gaze:thesis@evidence_ablation=blank@num_epochs=6")


def test_dry_run_writes_a_config_file_with_the_overrides(compare, tmp_path, capsys):
  compare.main([f"--out={tmp_path}", "--rows=gaze.py:thesis@data.evidence_ablation=only",
                "--seeds=3", "--num_images=8,4,6", "--dry_run", "--launcher=flock -s L"])
  command = capsys.readouterr().out.split()
  assert command[:3] == ["flock", "-s", "L"]
  config_file = next(a for a in command if a.startswith("--config="))[len("--config="):]
  config = runpy.run_path(config_file)["get_config"]()
  expected = config_lib.load_config(os.path.join(REPO, "configs", "gaze.py"), "thesis")
  assert config.data.evidence_ablation == "only"
  assert dict(config.data.synthetic_num_images) == {"train": 8, "validation": 4, "test": 6}
  assert config.model.to_dict() == expected.model.to_dict()
  assert "--config.seed=3" in command
  assert any(a.endswith("synthetic_isic2017_hard_6-8-4") for a in command)
  compare.main([f"--out={tmp_path}", "--rows=zoome.py:zoome@data.synthetic_age_signal=True",
                "--num_images=8,4,6", "--dry_run"])
  assert "synthetic_isic2020_hard_6-8-4_age_signal_True" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(tmp_path, "summary.json"))


def test_a_rows_chain_their_stage_1_run_per_seed(compare, tmp_path, capsys):
  """CIN's A rows (configs/cin.py PRETRAINED_FROM) train from lesion_attention's run of the
  same seed, which runs first; rows without A do not."""
  compare.main([f"--out={tmp_path}", "--rows=cin.py:A+F@data.target=melanoma,cin.py:F",
                "--seeds=0,1", "--dry_run"])
  lines = [l.split() for l in capsys.readouterr().out.splitlines() if "dermjax.main" in l]
  runs = [(next(a for a in l if a.startswith("--workdir=")), l) for l in lines]
  stage1 = [w for w, _ in runs if "cin_lesion_attention" in w]
  assert stage1 == [f"--workdir={tmp_path}/cin_lesion_attention/seed{s}" for s in (0, 1)]
  for seed in (0, 1):
    _, line = next((w, l) for w, l in runs if w.endswith(f"cin_ApF__target_melanoma/seed{seed}"))
    assert f"--config.model.pretrained={tmp_path}/cin_lesion_attention/seed{seed}" in line
  assert not any(a.startswith("--config.model.pretrained") for w, l in runs if "cin_F" in w
                 for a in l)
  assert [w for w, _ in runs].index(stage1[0]) < [w for w, _ in runs].index(
      f"--workdir={tmp_path}/cin_ApF__target_melanoma/seed0")


def _stat(mean, std):
  return {"mean": mean, "std": std, "n": 3}


def test_separations_need_the_std_intervals_apart(compare):
  summary = {
      "a": {"auc": _stat(0.90, 0.02), "gaze0/pointing_above_chance": _stat(0.8, 0.1),
            "gaze0/pointing_game": _stat(0.9, 0.0)},
      "b": {"auc": _stat(0.60, 0.05), "gaze0/pointing_above_chance": _stat(0.5, 0.25),
            "gaze0/pointing_game": _stat(0.1, 0.0)},
      "c": {"auc": _stat(0.84, 0.05), "cam/pointing_above_chance": _stat(0.3, 0.05)},
  }
  found = compare.separations(summary)
  assert found[0] == ("pointing_above_chance", "a gaze0", "c cam", 0.8, 0.3)   # widest gap first
  assert not any(f[0] == "pointing_game" for f in found)   # raw: chance levels differ
  assert ("auc", "a", "b", 0.90, 0.60) in found
  assert ("auc", "c", "b", 0.84, 0.60) in found
  assert not any(f[:3] == ("auc", "a", "c") for f in found)   # 0.06 < 0.02 + 0.05
  assert not any({f[1], f[2]} == {"a gaze0", "b gaze0"} for f in found)  # 0.3 < 0.35
  # One seed has no std: never counted as separated.
  assert not compare.separations({"a": {"auc": {"mean": 1.0, "std": 0.0, "n": 1}},
                                  "b": {"auc": {"mean": 0.0, "std": 0.0, "n": 1}}})


def test_chance_corrected_faithfulness_per_seed(compare):
  def result(pointing, chance, energy, energy_chance, deletion, random):
    return {"diagnosis": {"auc": 0.5},
            "explanation": {"maps": {"m": {"pointing_game": pointing, "pointing_chance": chance,
                                           "energy_share": energy, "energy_chance": energy_chance,
                                           "deletion_auc": deletion}},
                            "random_deletion": {"deletion_auc": random}}}
  s = compare.summarize([result(0.5, 0.25, 0.2, 0.1, 0.3, 0.5), result(0.3, 0.25, 0.1, 0.1, 0.6, 0.4)])
  assert s["m/pointing_above_chance"]["mean"] == pytest.approx((0.25 + 0.05) / 2)
  assert s["m/energy_over_chance"]["mean"] == pytest.approx((2.0 + 1.0) / 2)
  assert s["m/deletion_below_random"]["mean"] == pytest.approx((0.2 - 0.2) / 2)
  assert s["m/deletion_below_random"]["std"] == pytest.approx(np.std([0.2, -0.2], ddof=1))


def test_summarize_and_markdown(compare):
  results = [{"diagnosis": {"auc": a, "ap": a - 0.1},
              "explanation": {"maps": {"gaze0": {"pointing_game": p}},
                              "random_deletion": {"deletion_auc": 0.5}}}
             for a, p in ((0.8, 1.0), (0.9, 0.5), (float("nan"), 0.0))]
  s = compare.summarize(results)
  assert s["auc"]["n"] == 2 and abs(s["auc"]["mean"] - 0.85) < 1e-12   # NaN dropped
  assert s["auc_per_seed"][:2] == [0.8, 0.9]
  assert abs(s["gaze0/pointing_game"]["mean"] - 0.5) < 1e-12
  # A softmax head's melanoma-vs-rest numbers stand in for a binary head's.
  softmax = compare.summarize([{"diagnosis": {"melanoma_auc": 0.7, "melanoma_ap": 0.6}}] * 2)
  assert softmax["auc"]["mean"] == 0.7 and softmax["ap"]["mean"] == 0.6
  table = compare.markdown({"gaze:thesis": s})
  assert "| gaze:thesis | gaze0 | 0.850 ± 0.071 |" in table


def test_bad_row_specs_are_named_together_before_anything_runs(compare, tmp_path, capsys):
  with pytest.raises(SystemExit):
    compare.main([f"--out={tmp_path}", "--rows=gaze.py,gaze.py:thesis,cin.py:F@data.target",
                  "--dry_run"])
  err = capsys.readouterr().err
  assert "'gaze.py': expected table.py:row" in err and "'cin.py:F@data.target'" in err
  assert not os.listdir(tmp_path)
