"""The toy-world experiment end to end through the binary, on a shortened schedule:
data -> base model trained from scratch (loss falls) -> evaluation -> SL-CAI data,
SFT and evaluation -> report; then a rerun skips every finished phase."""
import json

import pytest

from cai_jax.train.metrics import read_jsonl


SMALL = [
    "toy_data.n_dialogues=300", "toy_data.n_critique=150", "toy_data.n_comparison=150",
    "toy_data.vocab_size=500", "toy_data.n_red_team=16", "toy_data.n_helpful=16",
    "toy_data.n_eval=24", "ModelConfig.vocab_size=512", "ModelConfig.d_model=48",
    "ModelConfig.n_layers=2", "ModelConfig.d_ff=96", "toy_base.pretrained=None",
    "base/sft.num_steps=40", "base/make_optimizer.warmup_steps=5", "base/sft.batch_size=8",
    "base/sft.seq_len=256",
    "base/sft.ckpt_every=15", "base/sft.log_every=5", "base/toy_eval.max_new_tokens=24",
    "generate_sl.max_new_tokens=12", "generate_sl.shard_size=8", "generate_sl.batch_size=8",
    "sl/generate_sl.num_rounds=2", "sl_conversations.skip_malformed=False",
    "sl/sft.num_steps=6", "sl/sft.batch_size=4", "sl/sft.seq_len=96", "sl/sft.ckpt_every=3",
    "sl/toy_eval.max_new_tokens=16",
]


def _run(run_main, workdir):
  return run_main(workdir, ["experiments/toy_world.gin"], SMALL, devices=1, timeout=600)


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
  info = json.loads((tmp_path / "exp" / "base" / "model" / "model.json").read_text())["info"]
  assert len(info["corpus_sha256"]) == 64  # the data fingerprint is recorded
  again = _run(run_main, tmp_path / "exp")
  assert again.returncode == 0
  assert again.stdout.count("complete, skipped") == 8  # all but the report
