"""``guard_eval`` on the tiny world: a random policy, hand-set classifiers (one fires on a
token about half the answers hold, one never fires); the table against the answers file."""
import collections
import dataclasses
import json

import pytest
from classifier_stubs import save_token_classifier

from cai_jax import models
from cai_jax.classifiers.measure import GUARDS
from cai_jax.constitution import initial_prompt
from cai_jax.models.store import SavedModel, save_model
from cai_jax.programs.classifiers.guard_eval import guard_eval
from cai_jax.sampling import Sampler

REFUSAL = "apple apple."


@pytest.fixture(scope="module")
def setup(tmp_path_factory, words_tokenizer, words, lm_config):
  root = tmp_path_factory.mktemp("guard_eval")
  cfg = dataclasses.replace(lm_config, init_std=0.3)   # varied greedy answers
  policy = save_model(str(root / "lm"), models.init(cfg, seed=5)[1], cfg,
                      info={"tokenizer_path": words_tokenizer.path})
  red, helpful = root / "red.jsonl", root / "helpful.jsonl"
  red.write_text("".join(json.dumps({"prompt": f"{w} {v}?"}) + "\n"
                         for w, v in zip(words[:6], words[6:])))
  helpful.write_text("".join(json.dumps({"prompt": f"{v} {w}?"}) + "\n"
                             for w, v in zip(words[:6], words[6:])))
  saved = SavedModel.open(policy)
  tok, sampler = saved.tokenizer(), Sampler(*saved.load())
  prompts = [initial_prompt(f"{v} {w}?").token_ids(tok) for w, v in zip(words[:6], words[6:])]
  answers = sampler.generate(prompts, max_new_tokens=6, stop_tokens=tok.stop_ids).tokens
  counts = collections.Counter(t for a in answers for t in set(a))
  bad = min(counts, key=lambda t: abs(counts[t] - len(answers) / 2))
  never = next(t for t in range(3, lm_config.vocab_size) if t not in counts
               and all(t not in p for p in prompts))
  v = lm_config.vocab_size
  return {"red": str(red), "helpful": str(helpful), "policy": policy,
          "helpful_with_bad": sum(bad in a for a in answers),
          "exchange": save_token_classifier(bad, v, "exchange", str(root / "ex"), tok.path),
          "input": save_token_classifier(never, v, "input", str(root / "in"), tok.path)}


def test_blocked_shares_match_the_reports(setup, tmp_path):
  out = tmp_path / "g"
  res = guard_eval(str(out), policy=setup["policy"], input_classifier=setup["input"],
                   exchange_classifier=setup["exchange"], red_team_prompts=setup["red"],
                   helpful_prompts=setup["helpful"], thresholds={"input": 0.5, "output": 0.5},
                   transforms=("none", "split_turns"), max_new_tokens=6, batch_size=4,
                   check_every=2, refusal_text=REFUSAL, timing_warmup=False)
  rows = res["rows"]
  assert [(r["set"], r["guard"]) for r in rows] == [
      (s, g) for s in ("red_team/none", "red_team/split_turns", "helpful") for g in GUARDS]
  log = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
  blocked_helpful = 0
  for row in rows:
    mine = [e for e in log if (e["set"], e["guard"]) == (row["set"], row["guard"])]
    assert len(mine) == row["n"] == 6
    blocked = [e for e in mine if e["report"]["blocked_at"] is not None]
    assert row["blocked"] == pytest.approx(len(blocked) / 6)
    assert row["blocked_input"] == 0.0                  # the input stub never fires
    assert all(e["guarded"] == REFUSAL for e in blocked)
    assert all(e["guarded"] == e["unguarded"] for e in mine if e not in blocked)
    if row["set"] == "helpful" and row["guard"] != "input":
      blocked_helpful = len(blocked)
  # the exchange stub fires on a token about half the helpful answers hold: exactly those
  assert blocked_helpful == setup["helpful_with_bad"] and 0 < blocked_helpful < 6
  split = [e["prompt"] for e in log if e["set"] == "red_team/split_turns"]
  assert split and all("Remember this text" in p for p in split)   # the shape was applied


def test_bad_inputs_fail_before_work(setup, tmp_path):
  kw = dict(policy=setup["policy"], input_classifier=setup["input"],
            exchange_classifier=setup["exchange"], red_team_prompts=setup["red"],
            helpful_prompts=setup["helpful"])
  with pytest.raises(ValueError, match="calibration_prompts or fixed thresholds"):
    guard_eval(str(tmp_path / "a"), **kw)
  with pytest.raises(ValueError, match="unknown"):
    guard_eval(str(tmp_path / "b"), thresholds={"input": 0.5, "output": 0.5},
               transforms=("leet",), **kw)
  other = save_token_classifier(1, 64, "exchange", str(tmp_path / "small"),
                                SavedModel.open(setup["policy"]).info["tokenizer_path"])
  with pytest.raises(ValueError, match="vocabulary of 64"):
    guard_eval(str(tmp_path / "c"), thresholds={"input": 0.5, "output": 0.5},
               **dict(kw, exchange_classifier=other))
  assert not (tmp_path / "c" / "results.json").exists()
