"""The toy-world experiment end to end through the binary, on a shortened schedule:
data -> base model trained from scratch (loss falls) -> evaluation -> SL-CAI data,
SFT and evaluation -> AI labels -> preference model -> PPO and DPO, their evaluations,
the over-optimisation curve, the pairwise Elo evaluation -> the report page; then a rerun
skips every finished phase."""
import json
import os
import re

import pytest

from cai_jax.train.metrics import read_jsonl


SMALL = [
    "toy_data.n_dialogues=300", "toy_data.n_critique=150", "toy_data.n_comparison=150",
    "toy_data.vocab_size=500", "toy_data.n_red_team=16", "toy_data.n_helpful=16",
    "toy_data.n_red_team_rl=16",
    "toy_data.n_eval=24", "ModelConfig.vocab_size=512", "ModelConfig.d_model=48",
    "ModelConfig.n_layers=2", "ModelConfig.d_ff=96", "toy_base.pretrained=None",
    "base/sft.num_steps=40", "base/make_optimizer.warmup_steps=5", "base/sft.batch_size=8",
    "base/sft.seq_len=256",
    "base/sft.ckpt_every=15", "base/sft.log_every=5", "base/toy_eval.max_new_tokens=24",
    "toy_data.n_feedback=48", "toy_feedback.pretrained=None", "feedback/sft.num_steps=3",
    "feedback/sft.batch_size=4", "feedback/sft.seq_len=256", "feedback/sft.ckpt_every=3",
    "feedback/toy_eval.max_new_tokens=8",
    "generate_sl.max_new_tokens=12", "generate_sl.shard_size=8", "generate_sl.batch_size=8",
    "sl/generate_sl.num_rounds=2", "sl_conversations.skip_malformed=False",
    "sl/sft_until_fit.schedules=(3, 6)", "sl/sft.batch_size=4", "sl/sft.seq_len=96",
    "sl/sft.ckpt_every=3", "sl/toy_eval.max_new_tokens=16", "sl/sft_until_fit.fit_n=8",
    "sl/sft_until_fit.fit_max_new_tokens=12",
    "toy_helpful_pairs.n=8", "label_preferences.max_prompts=8",
    "label_preferences.max_new_tokens=12", "label_preferences.shard_size=4",
    "label_preferences.batch_size=4", "label_preferences.eval_fraction=0.5",
    "preference_model.num_steps=4", "preference_model.batch_size=4",
    "preference_model.seq_len=96", "preference_model.eval_every=2",
    "preference_model.ckpt_every=2", "ppo.num_iterations=2", "ppo.rollout_batch=8",
    "ppo.minibatch_size=4", "ppo.max_new_tokens=12", "ppo.probe_every=1", "ppo.ckpt_every=1",
    "toy_probe.n=8", "toy_probe.max_new_tokens=12", "ppo/toy_eval.max_new_tokens=16",
    "dpo.num_steps=4", "dpo.batch_size=4", "dpo.seq_len=96", "dpo.ckpt_every=2",
    "dpo/toy_eval.max_new_tokens=16", "pairwise_eval.max_new_tokens=12",
    "pairwise_eval.num_bootstrap=100",
]


def _run(run_main, workdir):
  return run_main(workdir, ["experiments/toy_world.gin"], SMALL, devices=1, timeout=900)


@pytest.mark.slow
def test_toy_world_pipeline_end_to_end(run_main, tmp_path):
  r = _run(run_main, tmp_path / "exp")
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  rows = read_jsonl(str(tmp_path / "exp" / "base" / "metrics.jsonl"))
  assert rows[-1]["loss"] < 0.85 * rows[0]["loss"], [x["loss"] for x in rows]
  results = json.loads((tmp_path / "exp" / "eval_base" / "results.json").read_text())
  assert results["n_harmful"] + results["n_benign"] == 24
  assert "| base |" in r.stdout and "| SL-CAI |" in r.stdout  # the report is printed
  sl = json.loads((tmp_path / "exp" / "eval_sl_cai" / "results.json").read_text())
  assert sl["n_harmful"] + sl["n_benign"] == 24
  # SL-CAI's schedule gate: 3 steps, then 6 unless 3 reproduced the targets
  sched = json.loads((tmp_path / "exp" / "sl_cai" / "schedule.json").read_text())
  steps = [t["num_steps"] for t in sched["tried"]]
  assert steps in ([3], [3, 6]) and sched["chosen_steps"] == steps[-1]
  assert sched["passed"] == (sched["tried"][-1]["prefix_match"] >= 0.9)
  assert all(t["prefix_match"] < 0.9 for t in sched["tried"][:-1])
  fit = json.loads((tmp_path / "exp" / "sl_cai" / f"steps{steps[-1]}" / "fit" /
                    "results.json").read_text())
  assert fit["n"] == 8 and fit["prefix_match"] == sched["tried"][-1]["prefix_match"]
  info = json.loads((tmp_path / "exp" / "base" / "model" / "model.json").read_text())["info"]
  assert len(info["corpus_sha256"]) == 64  # the data fingerprint is recorded
  fb = json.loads((tmp_path / "exp" / "feedback" / "model" / "model.json").read_text())["info"]
  assert {"corpus_sha256", "feedback_sha256", "tokenizer_sha256",
          "init_manifest_sha256"} <= set(fb)   # the feedback model's fingerprint
  assert "judge_accuracy" in json.loads(
      (tmp_path / "exp" / "eval_feedback" / "results.json").read_text())
  # RL-CAI: labels with diagnostics, a PM evaluated on held-out labels, PPO with probes
  diag = json.loads((tmp_path / "exp" / "label" / "diagnostics.json").read_text())
  assert diag["summary"]["num_helpful"] == 8 and "swap_flip_rate" in diag["diagnostics"]
  pm = [r for r in read_jsonl(str(tmp_path / "exp" / "pm" / "metrics.jsonl"))
        if "eval/loss" in r]
  assert [r["step"] for r in pm] == [2, 4]
  pm_eval = json.loads((tmp_path / "exp" / "pm_eval" / "results.json").read_text())
  assert 0.0 <= pm_eval["prefers_refusal_on_harmful"] <= 1.0 and pm_eval["heldout_pairs"] > 0
  ppo = read_jsonl(str(tmp_path / "exp" / "ppo" / "metrics.jsonl"))
  assert [r["step"] for r in ppo if "probe/true_utility" in r] == [0, 1, 2]
  assert [r["step"] for r in ppo if "env/pm_score" in r] == [1, 2]
  for name in ("eval_ppo", "eval_dpo"):
    res = json.loads((tmp_path / "exp" / name / "results.json").read_text())
    assert res["n_harmful"] + res["n_benign"] == 24
  assert "| RL-CAI (PPO) |" in r.stdout and "| RL-CAI (DPO) |" in r.stdout
  assert "- SL-CAI schedule: " in r.stdout and "- DPO: step 4 of 4 kept" in r.stdout
  assert (tmp_path / "exp" / "overoptimisation" / "overoptimisation.svg").exists()
  # the paper's evaluation: pairwise Elo by the feedback model and by the oracle
  pw = json.loads((tmp_path / "exp" / "pairwise" / "results.json").read_text())
  assert pw["models"] == ["base", "SL-CAI", "PPO", "DPO"] and pw["anchor"] == "base"
  assert sum(e["num_prompts"] for e in pw["sets"].values()) == 24
  for entry in pw["sets"].values():
    assert entry["num_comparisons"] == 6 * entry["num_prompts"]
    assert entry["judge"]["ratings"][0] == entry["oracle"]["ratings"][0] == 0.0
    agree = entry["agreement"]
    assert agree["pairs_total"] == entry["num_comparisons"]
    assert not abs(agree["spearman"]) > 1.0   # nan where the oracle ties every model
  # the report page embeds the Elo tables and figures that exist
  page = (tmp_path / "exp" / "report" / "results.md").read_text()
  assert "## Pairwise evaluation: Elo scores" in page and "| PPO | " in page
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
  assert {os.path.basename(x) for x in links} == {
      "pareto.png", "pareto_oracle.png", "ppo_curves.png", "pm_reliability.png",
      "overoptimisation.png"}
  assert all((tmp_path / "exp" / "report" / x).exists() for x in links)
  again = _run(run_main, tmp_path / "exp")
  assert again.returncode == 0
  assert again.stdout.count("complete, skipped") == 22, [   # all but the report
      line for line in again.stdout.splitlines() if line.startswith("[")]
