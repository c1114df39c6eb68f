"""``judge_eval``: the feedback model's verdicts on two models' answers and on SL-CAI
revisions, checked against a brute-force full forward of the same judge prompts; the
report; a rerun reuses the written answers."""
import json
import os

import jax
import numpy as np
import pytest

from cai_jax import constitution as cc
from cai_jax import models
from cai_jax.constitution import assessment
from cai_jax.data.dialogue import parse_hh
from cai_jax.data.generated import read_sl_data
from cai_jax.models.store import SavedModel, save_model
from cai_jax.programs.evaluate.judge_eval import judge_eval
from cai_jax.programs.sl_cai.generate import generate_sl

CONST = "constitutions/default.json"


def _p_a(model, tok, prompts):
  """P("(A)") from one full forward per prompt (single-token options in this vocab)."""
  a, b = tok.single_token_id("(A)"), tok.single_token_id("(B)")
  out = []
  for p in prompts:
    ids = np.asarray([p.token_ids(tok)], np.int32)
    logp = jax.nn.log_softmax(models.logits(model, ids)[0, -1])
    out.append(float(1 / (1 + np.exp(logp[b] - logp[a]))))
  return np.asarray(out)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, random_lm, lm_config, words_tokenizer, words):
  d = tmp_path_factory.mktemp("judge_eval")
  other = save_model(str(d / "other"), models.init(lm_config, seed=5)[1], lm_config,
                     info={"tokenizer_path": words_tokenizer.path})
  for name, ws in (("red.jsonl", words[:3]), ("help.jsonl", words[3:5])):
    (d / name).write_text("".join(json.dumps({"id": w, "prompt": f"{w}?"}) + "\n" for w in ws))
  sl = generate_sl(str(d / "sl"), model=random_lm, prompts_path=str(d / "red.jsonl"),
                   constitution_path=CONST, num_rounds=1, exemplars=False, max_new_tokens=5,
                   temperature=1.0, shard_size=4, batch_size=4, mesh_shape=(1, 1, 1))
  return d, other, sl


def test_verdicts_and_revision_wins_match_brute_force(inputs, random_lm, words_tokenizer,
                                                      tmp_path):
  d, other, sl = inputs
  kw = dict(models={"base": random_lm, "other": other}, feedback_model=random_lm,
            red_team_prompts=str(d / "red.jsonl"), helpful_prompts=str(d / "help.jsonl"),
            constitution_path=CONST, sl_data=sl, max_new_tokens=6, batch_size=4,
            mesh_shape=(1, 1, 1))
  out = judge_eval(str(tmp_path / "eval"), **kw)
  results = json.loads(open(out).read())
  assert list(results["models"]) == ["base", "other"]
  judge = models.merge(*SavedModel.open(random_lm).load())
  tok = words_tokenizer
  for name in ("base", "other"):
    for kind, n in (("red_team", 3), ("helpful", 2)):
      rows = [json.loads(x) for x in open(tmp_path / "eval" / "answers" / f"{name}.{kind}.jsonl")]
      assert len(rows) == n == results["models"][name][kind]["n"]
      prompts = [p for r in rows for p in assessment.assessment_prompts(r["prompt"], r["answer"])]
      p_a = _p_a(judge, tok, prompts)
      want = 0.5 * (p_a[0::2] + 1 - p_a[1::2])
      np.testing.assert_allclose([r["p_harmful"] for r in rows], want, atol=2e-4)
      assert results["models"][name][kind]["judged_harmful"] == pytest.approx(
          np.mean(want > 0.5))
  # the judge's discrimination: AUC of P(harmful), red-team vs helpfulness answers
  ps = {k: [json.loads(x)["p_harmful"] for m in ("base", "other")
            for x in open(tmp_path / "eval" / "answers" / f"{m}.{k}.jsonl")]
        for k in ("red_team", "helpful")}
  pairs = [(a > b) + 0.5 * (a == b) for a in ps["red_team"] for b in ps["helpful"]]
  assert results["judge_discrimination"]["pooled"] == pytest.approx(np.mean(pairs))
  chains = read_sl_data(sl)
  const = cc.load_constitution(cc.resolve_constitution_path(CONST))
  prompts = []
  for c in chains:
    pr = cc.sample_comparison_principles(const, seed=0, prompt_index=int(c["index"]))[0]
    req = parse_hh(c["prompt"])
    prompts += [cc.comparison_prompt(req, c["final"], c["initial"], pr),
                cc.comparison_prompt(req, c["initial"], c["final"], pr)]
  p_a = _p_a(judge, tok, prompts)
  rev = results["revision_vs_original"]
  np.testing.assert_allclose(rev["p_revision"], 0.5 * (p_a[0::2] + 1 - p_a[1::2]), atol=2e-4)
  md = open(tmp_path / "eval" / "results.md").read()
  assert "| base | red-team prompts (3) |" in md and "Critique 1:" in md

  # a rerun of a finished evaluation is skipped; without DONE it reuses the answers
  os.remove(tmp_path / "eval" / "DONE")
  stamp = os.path.getmtime(tmp_path / "eval" / "answers" / "base.red_team.jsonl")
  assert json.loads(open(judge_eval(str(tmp_path / "eval"), **kw)).read()) == results
  assert os.path.getmtime(tmp_path / "eval" / "answers" / "base.red_team.jsonl") == stamp


def test_bad_model_path_fails_before_any_work(inputs, random_lm, tmp_path):
  d, _, _ = inputs
  with pytest.raises(FileNotFoundError, match=r"judge_eval.models\['missing'\]"):
    judge_eval(str(tmp_path / "eval"), models={"base": random_lm, "missing": "/no/such"},
               feedback_model=random_lm, red_team_prompts=str(d / "red.jsonl"),
               constitution_path=CONST, mesh_shape=(1, 1, 1))
  assert not os.path.exists(tmp_path / "eval" / "answers")
