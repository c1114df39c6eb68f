"""The report page's sections: the Elo tables (numbers as given, intervals in brackets),
the agreement row, figure links that resolve from the report's folder, PPO curves drawn
from ``metrics.jsonl``, the reliability diagram from held-out scores, and sections of
phases that did not run left out."""
import json
import os
import re

from cai_jax.evaluation import experiment_report, pairwise_report


def _fit(ratings, lower, upper):
  n = len(ratings)
  return {"ratings": ratings, "lower": lower, "upper": upper, "stderr": [1.0] * n,
          "win_rate": [[None if i == j else 0.5 for j in range(n)] for i in range(n)]}


def _results():
  sets = {}
  for kind, shift in (("red_team", 0.0), ("helpful", 10.0)):
    sets[kind] = {
        "axis": dict(pairwise_report.AXES)[kind], "num_prompts": 7, "num_comparisons": 21,
        "judge": _fit([0.0, 40.0 + shift, -12.0], [0.0, 20.0 + shift, -30.0],
                      [0.0, 61.0 + shift, 3.0]),
        "oracle": _fit([0.0, 80.0, 5.0], [0.0, 60.0, -9.0], [0.0, 99.0, 20.0]),
        "agreement": {"spearman": 0.5, "pearson": 0.75, "pairwise_agreement": 0.625,
                      "pairs_with_oracle_winner": 16, "pairs_total": 21}}
  return {"judge": "/models/fb", "judge_kind": "feedback model", "anchor": "base",
          "models": ["base", "PPO", "DPO"], "lines": [["base", "PPO"]], "sets": sets}


def _links(lines):
  return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", "\n".join(lines))


def test_pairwise_section(tmp_path):
  pw, report = tmp_path / "pairwise", tmp_path / "report"
  report.mkdir()
  res = _results()
  os.makedirs(pw)
  (pw / "results.json").write_text(json.dumps(res))
  pairwise_report.write(str(pw), res)
  lines = experiment_report.pairwise_section(str(report), str(pw))
  text = "\n".join(lines)
  assert "| PPO | +40 [+20, +61] | +50 [+30, +71] |" in text   # judge: harm, help
  assert "| PPO | +80 [+60, +99] | +80 [+60, +99] |" in text   # oracle
  assert "| harmlessness | 0.500 | 0.750 | 0.625 | 16 of 21 |" in text
  links = _links(lines)
  assert links == ["../pairwise/pareto.png", "../pairwise/pareto_oracle.png"]
  for link in links:
    assert os.path.exists(os.path.join(report, link))


def test_ppo_and_reliability_sections(tmp_path):
  report, ppo, pm = tmp_path / "report", tmp_path / "ppo", tmp_path / "pm_eval"
  for d in (report, ppo, pm):
    d.mkdir()
  (ppo / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "env/reward": 0.1 * s, "env/kl": 0.01 * s}) + "\n"
      for s in range(1, 6)) + json.dumps({"step": 4, "probe/pm_score": 1.0}) + "\n")
  (pm / "heldout_scores.jsonl").write_text("".join(
      json.dumps({"prob": p, "target": t}) + "\n"
      for p, t in ((0.55, 1.0), (0.65, 0.5), (0.95, 1.0))))
  lines = experiment_report.ppo_section(str(report), str(ppo))
  assert "(5 logged steps)" in "\n".join(lines)
  assert _links(lines) == ["ppo_curves.png"]
  lines = experiment_report.reliability_section(str(report), str(pm))
  assert "3 held-out pairs" in "\n".join(lines)
  assert _links(lines) == ["pm_reliability.png"]
  for stem in ("ppo_curves", "pm_reliability"):
    for ext in (".png", ".svg"):
      assert (report / (stem + ext)).stat().st_size > 0


def test_phases_that_did_not_run_are_left_out(tmp_path):
  report = str(tmp_path)
  missing = str(tmp_path / "nothing")
  assert experiment_report.pairwise_section(report, missing) == []
  assert experiment_report.ppo_section(report, missing) == []
  assert experiment_report.reliability_section(report, missing) == []
  assert experiment_report.figure_section(report, "t", missing + ".png") == []
  assert not any(f.endswith(".png") for f in os.listdir(report))
