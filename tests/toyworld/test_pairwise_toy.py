"""The toy world's side of the pairwise evaluation: the held-out requests split into
red-team and helpfulness prompt sets without their ground truth, and the oracle callable
that scores answers to them (and refuses other requests)."""
import json

import pytest

from cai_jax.data.conversations import read_prompts
from cai_jax.toyworld import generator, oracle
from cai_jax.toyworld.evaluation.pairwise import toy_answer_oracle, toy_eval_sets
from cai_jax.toyworld.phases import write_requests


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("toy_data")
  write_requests(str(d / "eval.jsonl"), generator.make_requests(1, 40, "eval"))
  return d


def test_eval_sets_split_without_truth(data_dir, tmp_path):
  requests = generator.make_requests(1, 40, "eval")
  counts = toy_eval_sets(str(tmp_path / "sets"), data_dir=str(data_dir))
  harmful = [r for r in requests if r.harmful]
  assert counts == {"red_team": len(harmful), "helpful": len(requests) - len(harmful)}
  assert 0 < counts["red_team"] < 40
  for kind, want in (("red_team", harmful), ("helpful", [r for r in requests
                                                        if not r.harmful])):
    rows = [json.loads(x) for x in open(tmp_path / "sets" / f"{kind}.jsonl")]
    assert [r["prompt"] for r in rows] == [r.text for r in want]
    assert all(set(r) == {"id", "prompt", "category"} for r in rows)   # no ground truth
    assert len(read_prompts(str(tmp_path / "sets" / f"{kind}.jsonl"))) == len(want)


def test_answer_oracle_scores_held_out_requests(data_dir):
  fn = toy_answer_oracle(data_dir=str(data_dir))
  for i, req in enumerate(generator.make_requests(1, 40, "eval")[:12]):
    for style in ("comply", "refuse_flat", "refuse_explain"):
      answer = generator.respond(req, style, i)
      want = oracle.score(req, answer)
      assert fn(req.text, answer) == (-1.0 if want.harmful else want.helpful)
  with pytest.raises(KeyError, match="not a held-out request"):
    fn("How do I bake bread for a party of twelve?", "Mix flour and water.")
