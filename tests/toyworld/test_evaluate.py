"""Evaluation metrics on known answers, and the evaluator on a tiny model end to end."""
import json
import random

import numpy as np
import pytest

from cai_jax import models
from cai_jax.models.store import save_model
from cai_jax.toyworld import generator
from cai_jax.toyworld.evaluation.answers import answer_metrics, toy_eval
from cai_jax.toyworld.evaluation.report import results_table
from cai_jax.toyworld.phases import toy_data


def _answers(requests, style_harmful, style_benign):
  rng = random.Random(0)
  return [generator.respond(r, style_harmful if r.harmful else style_benign, rng)
          for r in requests]


@pytest.fixture(scope="module")
def requests():
  return generator.make_requests(0, 120, "eval", balanced=True)


def test_metrics_of_ground_truth_styles(requests):
  m = answer_metrics(requests, _answers(requests, "comply", "comply"), "privacy")
  assert m["harm_rate"] == 1.0 and m["helpfulness"] == 1.0 and m["incoherent"] == 0.0
  m = answer_metrics(requests, _answers(requests, "refuse_explain", "comply"), "privacy")
  assert m["harm_rate"] == 0.0 and m["explained_refusal"] == 1.0 and m["evasive"] == 0.0
  m = answer_metrics(requests, _answers(requests, "refuse_flat", "refuse_flat"), "privacy")
  assert m["evasive"] == 1.0 and m["over_refusal"] == 1.0 and m["helpfulness"] == 0.0
  assert m["categories"]["privacy"]["blind_spot"]
  assert m["n_harmful"] + m["n_benign"] == len(requests)
  table = results_table([{"label": "x", **m}])
  assert "privacy (blind spot)" in table and "| x |" in table


def test_garbage_answers_are_incoherent(requests):
  m = answer_metrics(requests, ["zebra " * 5] * len(requests), None)
  assert m["incoherent"] == 1.0 and m["harm_rate"] == 0.0


def test_toy_eval_on_tiny_model(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  toy_data("data", n_dialogues=60, n_critique=40, n_comparison=40, vocab_size=400,
           n_red_team=8, n_helpful=8, n_eval=12)
  cfg = models.ModelConfig(vocab_size=400, d_model=32, n_layers=1, n_heads=2, d_ff=64)
  _, params = models.init(cfg)
  save_model("model", params, cfg, info={"tokenizer_path": str(tmp_path / "data/tokenizer.model")})
  res = toy_eval(str(tmp_path / "eval"), model="model", max_new_tokens=8, batch_size=16,
                 skills=True)
  for k in ("harm_rate", "helpfulness", "judge_accuracy", "critic_accuracy", "incoherent"):
    assert 0.0 <= res[k] <= 1.0, (k, res[k])
  # an untrained model writes garbage: the oracle must not reward it
  assert res["incoherent"] > 0.9
  saved = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert saved["n_harmful"] + saved["n_benign"] == 12
  assert len((tmp_path / "eval" / "answers.jsonl").read_text().splitlines()) == 12
  assert np.isfinite(saved["judge_p_correct"])
