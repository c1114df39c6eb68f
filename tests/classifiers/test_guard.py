"""The guarded sampler: input refusals, output blocks at the exact token, benign rows
unchanged; threshold calibration."""
import jax.numpy as jnp
import numpy as np
import pytest
from classifier_stubs import token_classifier

from cai_jax import models
from cai_jax.classifiers import (GuardedSampler, StreamingClassifier,
                                 threshold_for_false_refusal_rate)
from cai_jax.sampling import Sampler

VOCAB = 64
LM_CFG = models.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4,
                            n_kv_heads=2, d_ff=64, init_std=0.3)
CLF_CFG = models.ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2,
                             n_kv_heads=1, d_ff=32)
PROMPTS = [[5, 9, 2, 7], [11, 3], [8, 1, 4, 4, 6, 10, 2], [12, 13, 14]]
REFUSAL = [1, 2, 3]


def stub_classifier(bad_token: int) -> StreamingClassifier:
  """Scores ~1 after ``bad_token``, ~0 after any other token (``classifier_stubs``)."""
  return StreamingClassifier(*token_classifier(bad_token, VOCAB))


@pytest.fixture(scope="module")
def sampler():
  return Sampler(*models.init(LM_CFG, seed=5))


def _pick_bad_token(answers):
  """A token in row 0's answer that no other answer holds -> (token, first index)."""
  others = {t for a in answers[1:] for t in a}
  for i, t in enumerate(answers[0]):
    if t not in others and i > 0:
      return t, i
  raise AssertionError(f"no token unique to row 0 in {answers}")


@pytest.mark.parametrize("check_every,mode,temperature",
                         [(1, "exchange", 0.0), (3, "output", 1.0), (4, "exchange", 1.0)])
def test_blocks_at_first_crossing_and_leaves_benign_rows(sampler, check_every, mode,
                                                         temperature):
  kw = dict(max_new_tokens=12, temperature=temperature, seed=3)
  plain = sampler.generate(PROMPTS, **kw).tokens
  bad, first = _pick_bad_token(plain)
  guard = GuardedSampler(sampler, stub_classifier(bad), threshold=0.5,
                         check_every=check_every, mode=mode, refusal_tokens=REFUSAL)
  out = guard.generate(PROMPTS, **kw)
  assert out.reports[0]["blocked_at"] == "output"
  assert out.reports[0]["token_index"] == first
  assert out.reports[0]["max_score"] > 0.95
  assert out.tokens[0] == REFUSAL
  assert out.generated[0] == plain[0][:first + 1]
  for i in range(1, len(PROMPTS)):
    assert out.tokens[i] == plain[i], i
    assert out.reports[i]["blocked_at"] is None and out.reports[i]["max_score"] < 0.05


def test_input_classifier_refuses_before_generating(sampler):
  kw = dict(max_new_tokens=8, temperature=1.0, seed=1)
  prompts = PROMPTS[:3] + [[20, 21, 42]]        # the last prompt ends with the bad token
  plain = sampler.generate(prompts, **kw).tokens
  clf = stub_classifier(42)
  guard = GuardedSampler(sampler, None, clf, threshold=0.5, refusal_tokens=REFUSAL)
  out = guard.generate(prompts, **kw)
  assert [r["blocked_at"] for r in out.reports] == [None, None, None, "input"]
  assert out.tokens[3] == REFUSAL and out.generated[3] == []
  assert out.input_scores[3] > 0.95 and max(out.input_scores[:3]) < 0.05
  assert out.tokens[:3] == plain[:3]


def test_threshold_for_false_refusal_rate():
  scores = [0.1, 0.9, 0.3, 0.4, 0.2]
  # 20% of 5 rows: one refusal allowed -> just above the 2nd largest score (0.4).
  t = threshold_for_false_refusal_rate(scores, 0.2)
  assert t > np.float32(0.4) and t == np.nextafter(np.float32(0.4), np.float32(1))
  assert np.mean(np.asarray(scores, np.float32) >= t) == 0.2
  # 0.39 * 5 = 1.95 -> still one refusal; 0.4 -> two: just above 0.3.
  assert threshold_for_false_refusal_rate(scores, 0.39) == t
  assert threshold_for_false_refusal_rate(scores, 0.4) == np.nextafter(np.float32(0.3),
                                                                      np.float32(1))
  # none allowed -> just above the largest; all allowed -> the smallest score.
  assert threshold_for_false_refusal_rate(scores, 0.0) == np.nextafter(np.float32(0.9),
                                                                      np.float32(1))
  assert threshold_for_false_refusal_rate(scores, 1.0) == np.float32(0.1)
  # ties: [0.5, 0.5, 0.1] with one refusal allowed -> above 0.5 (no refusal at all).
  assert threshold_for_false_refusal_rate([0.5, 0.5, 0.1], 0.34) > np.float32(0.5)


@pytest.mark.parametrize("mode", ["exchange", "output"])
def test_reported_max_score_equals_full_forward(sampler, mode):
  """A random classifier that never blocks: each row's max score over its generated
  tokens (ragged: stop tokens end rows at different steps) equals the plain forward's."""
  import jax  # pylint: disable=import-outside-toplevel
  graphdef, params = models.init(CLF_CFG, "scalar", seed=9)
  params["head_w_d"] = jnp.asarray(np.random.default_rng(1).normal(size=CLF_CFG.d_model),
                                   jnp.float32)
  kw = dict(max_new_tokens=10, temperature=1.0, seed=4)
  free = sampler.generate(PROMPTS, **kw).tokens
  kw["stop_tokens"] = [free[0][2], free[2][5]]     # rows end at different steps
  plain = sampler.generate(PROMPTS, **kw).tokens
  assert len({len(t) for t in plain}) > 1
  guard = GuardedSampler(sampler, StreamingClassifier(graphdef, params), threshold=2.0,
                         check_every=4 if mode == "exchange" else 3, mode=mode)
  out = guard.generate(PROMPTS, **kw)
  assert out.tokens == plain
  seqs = [(p if mode == "exchange" else []) + t for p, t in zip(PROMPTS, plain)]
  tokens = np.zeros((len(seqs), 32), np.int32)     # right-padded: one compiled forward
  for i, seq in enumerate(seqs):
    tokens[i, :len(seq)] = seq
  probs = np.asarray(jax.nn.sigmoid(models.merge(graphdef, params)(jnp.asarray(tokens))))
  for i, (seq, t, rep) in enumerate(zip(seqs, plain, out.reports)):
    assert rep["blocked_at"] is None
    np.testing.assert_allclose(rep["max_score"], probs[i, len(seq) - len(t):len(seq)].max(),
                               atol=2e-5)
