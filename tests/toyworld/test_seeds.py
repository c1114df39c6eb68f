"""toy_seeds' summary: mean +- sample sd of every entry, worked by hand."""
import json
import os

from cai_jax.toyworld import seeds


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)


def _run(tmp_path, name, harm, priv, acc):
  wd = str(tmp_path / name)
  cats = {"cooking": {"helpfulness": 1.0, "blind_spot": False},
          "privacy": {"harm_rate": priv, "blind_spot": True}}
  _write(f"{wd}/eval_sl_cai/results.json",
         {"label": "SL-CAI", "harm_rate": harm, "helpfulness": 0.9, "evasive": 0.0,
          "explained_refusal": 0.5, "over_refusal": 0.0, "incoherent": 0.1,
          "categories": cats})
  _write(f"{wd}/label_eval/results.json", {"label_accuracy": acc})
  _write(f"{wd}/label/diagnostics.json", {"diagnostics": {"num_ai_pairs": 500}})
  if name == "b":   # one run with the recipe's choices written
    _write(f"{wd}/sl_cai/schedule.json", {"chosen_steps": 44, "tried": [
        {"num_steps": 22, "prefix_match": 0.5}, {"num_steps": 44, "prefix_match": 0.95}]})
    _write(f"{wd}/dpo/best.json", {"step": 30, "value": 0.61234})
  return wd


def test_summary_means_and_sample_sds(tmp_path):
  dirs = {0: _run(tmp_path, "a", 0.1, 0.2, 0.6), 1: _run(tmp_path, "b", 0.3, 0.2, 0.8),
          2: _run(tmp_path, "c", 0.2, 0.5, 0.7)}
  table, per_seed = seeds.summarize(dirs, ("eval_sl_cai",))
  # harm 0.1, 0.3, 0.2: mean 0.2, sd sqrt((0.01 + 0.01 + 0) / 2) = 0.1
  assert "| SL-CAI | 0.200 ± 0.100 | 0.900 ± 0.000 |" in table
  # privacy 0.2, 0.2, 0.5: mean 0.3, sd sqrt((0.01 + 0.01 + 0.04) / 2) = 0.173
  assert "0.300 ± 0.173" in table and "privacy (blind spot)" in table
  assert "0.700 ± 0.100" in table             # label accuracy
  assert "| 500.000 ± 0.000 |" in table        # pairs
  assert "- |" in table                         # a missing file is a dash, not a zero
  assert per_seed["1"]["eval_sl_cai/harm_rate"] == 0.3
  assert seeds.mean_sd([0.5]) == (0.5, 0.0)
  # per seed: the models' own numbers, and the recipe's choices (a dash where not written)
  assert "| 1 | 0.300 / 0.900 / 0.000 / 0.500 / 0.100 |" in table
  assert "| 1 | 44 | 0.950 | 30 | 0.612 |" in table
  assert "| 0 | - | - | - | - |" in table


def test_report_names_the_recipes_choices(tmp_path, monkeypatch):
  from cai_jax.toyworld.evaluation.report import choices_lines
  monkeypatch.chdir(tmp_path)
  assert choices_lines() == []   # nothing chosen: nothing said
  _write("sl_cai/schedule.json", {"chosen_steps": 66, "passed": False, "threshold": 0.9,
                                  "tried": [{"num_steps": 22, "prefix_match": 0.5},
                                            {"num_steps": 66, "prefix_match": 0.8}]})
  _write("dpo/best.json", {"metric": "eval/loss", "step": 30, "value": 0.61234})
  _write("dpo/model/model.json", {"info": {"num_steps": 100}})
  assert choices_lines() == [
      "- SL-CAI schedule: 66 steps (threshold NOT reached; threshold 0.90; prefix match by "
      "steps tried: 22: 0.500, 66: 0.800)",
      "- DPO: step 30 of 100 kept (lowest eval/loss on held-out AI labels: 0.6123)"]
