"""Cached decode vs the full forward: logits (a), log-probs (e), stops, edge cases."""
import numpy as np
import pytest
from conftest import CFG, full_logits, full_logprobs, random_prompts

from cai_jax import models, sampling

PROMPTS = random_prompts([3, 11, 1, 7, 16, 5])


def _check_step_logits(model, prompt_plus, out, rows, atol=1e-4):
  """Row r's step-i logits == full-forward logits predicting its i-th new token."""
  step_logits = np.asarray(out.step_logits)
  fulls = full_logits(model, [prompt_plus[r] + out.tokens[r] for r in rows])
  for r, full in zip(rows, fulls):
    start = len(prompt_plus[r]) - 1
    for i in range(len(out.tokens[r])):
      np.testing.assert_allclose(step_logits[r, i], full[start + i], atol=atol,
                                 err_msg=f"row {r} step {i}")


def test_a_cached_logits_equal_full_forward_ragged(lm):
  s = sampling.Sampler.from_model(lm)
  stop = [5, 17]  # some rows stop early, others run to the budget
  out = s.generate(PROMPTS, max_new_tokens=12, collect_logits=True, stop_tokens=stop)
  assert len(out.tokens) == len(PROMPTS)
  _check_step_logits(lm, PROMPTS, out, range(len(PROMPTS)))


def test_a_continuation_logits_equal_full_forward(lm):
  """A continued conversation (holes from stops and padding) still matches."""
  s = sampling.Sampler.from_model(lm)
  out1 = s.generate(PROMPTS, max_new_tokens=6, stop_tokens=[5, 17], keep_state=True,
                    cache_len=128, temperature=1.0, seed=3)
  extra = random_prompts([2, 9, 1, 4, 3, 12], seed=5)
  out2 = s.continue_generation(out1.conversation, extra, max_new_tokens=8,
                               collect_logits=True)
  history = [p + t1 + e for p, t1, e in zip(PROMPTS, out1.tokens, extra)]
  _check_step_logits(lm, history, out2, range(len(PROMPTS)))


def test_e_logprobs_equal_full_forward_log_softmax(lm):
  out = sampling.generate(lm, PROMPTS, max_new_tokens=10, temperature=0.8, top_k=20,
                          top_p=0.9, seed=11, num_samples=2)
  assert len(out.tokens) == 2 * len(PROMPTS)
  refs = full_logprobs(lm, [PROMPTS[r // 2] + t for r, t in enumerate(out.tokens)])
  for r, (toks, lps, ref) in enumerate(zip(out.tokens, out.logprobs, refs)):
    prompt = PROMPTS[r // 2]
    want = [ref[len(prompt) - 1 + i, t] for i, t in enumerate(toks)]
    np.testing.assert_allclose(lps, want, atol=1e-4)


def test_greedy_equals_argmax_of_full_forward(lm):
  out = sampling.generate(lm, PROMPTS, max_new_tokens=9)
  refs = full_logprobs(lm, [p + t for p, t in zip(PROMPTS, out.tokens)])
  for prompt, toks, ref in zip(PROMPTS, out.tokens, refs):
    assert toks == ref[len(prompt) - 1:-1].argmax(-1).tolist()


def test_stop_tokens_included_and_end_rows(lm):
  greedy = sampling.generate(lm, PROMPTS, max_new_tokens=10)
  stop = greedy.tokens[0][3]
  out = sampling.generate(lm, PROMPTS, max_new_tokens=10, stop_tokens=[stop])
  for full, toks in zip(greedy.tokens, out.tokens):
    k = full.index(stop) + 1 if stop in full else len(full)
    assert toks == full[:k]
  assert out.tokens[0][-1] == stop and len(out.tokens[0]) <= 4


def test_max_new_tokens_one_and_budget_respected(lm):
  out = sampling.generate(lm, PROMPTS[:2], max_new_tokens=1)
  assert [len(t) for t in out.tokens] == [1, 1]
  out = sampling.generate(lm, PROMPTS[:2], max_new_tokens=19, temperature=1.0)
  assert [len(t) for t in out.tokens] == [19, 19]


def test_sampling_is_seeded(lm):
  a = sampling.generate(lm, PROMPTS, max_new_tokens=8, temperature=1.0, seed=1)
  b = sampling.generate(lm, PROMPTS, max_new_tokens=8, temperature=1.0, seed=1)
  c = sampling.generate(lm, PROMPTS, max_new_tokens=8, temperature=1.0, seed=2)
  assert a.tokens == b.tokens and a.tokens != c.tokens


@pytest.mark.parametrize("kw", [dict(max_new_tokens=0), dict(max_new_tokens=4, temperature=-1),
                                dict(max_new_tokens=4, top_p=0.0),
                                dict(max_new_tokens=4, top_k=-2)])
def test_bad_arguments_raise(lm, kw):
  with pytest.raises(ValueError):
    sampling.generate(lm, PROMPTS[:1], **kw)


def test_empty_prompt_raises(lm):
  with pytest.raises(ValueError):
    sampling.generate(lm, [[1, 2], []], max_new_tokens=2)


def test_bfloat16_model_runs():
  cfg = models.ModelConfig(**{**CFG.to_dict(), "param_dtype": "bfloat16", "dtype": "bfloat16"})
  out = sampling.generate(models.build(cfg, seed=1), PROMPTS[:3], max_new_tokens=5)
  assert all(len(t) == 5 for t in out.tokens)
  assert all(np.isfinite(lp).all() for lp in out.logprobs)
