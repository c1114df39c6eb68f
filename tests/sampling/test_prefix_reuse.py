"""Prefix reuse: n samples share one prefill; conversations continue without re-prefill."""
import numpy as np
import pytest
from conftest import random_prompts

from cai_jax import models, sampling
from cai_jax.sampling import engine

PROMPTS = random_prompts([6, 13, 2], seed=21)


def test_num_samples_share_one_prefill(lm, monkeypatch):
  shapes = []
  real_prefill = engine.prefill

  def spy(graphdef, params, tokens, *args, **kwargs):
    shapes.append((tokens.shape, kwargs["num_samples"]))
    return real_prefill(graphdef, params, tokens, *args, **kwargs)

  monkeypatch.setattr(engine, "prefill", spy)
  one = sampling.generate(lm, PROMPTS, max_new_tokens=7)
  four = sampling.generate(lm, PROMPTS, max_new_tokens=7, num_samples=4)
  assert shapes[1] == (shapes[0][0], 4)  # same prompt batch, forked inside
  assert four.tokens == [t for t in one.tokens for _ in range(4)]  # greedy: identical copies


def test_num_samples_rows_differ_when_sampling(lm):
  out = sampling.generate(lm, PROMPTS, max_new_tokens=12, temperature=1.0, num_samples=3,
                          seed=2)
  for i in range(len(PROMPTS)):
    rows = out.tokens[3 * i:3 * i + 3]
    assert len({tuple(r) for r in rows}) > 1


def test_four_round_chain_equals_reprefill(lm):
  """Critique -> revision shaped: each round continues the cache; fresh prefill agrees."""
  s = sampling.Sampler.from_model(lm)
  stop = [9, 40]
  out = s.generate(PROMPTS, max_new_tokens=10, stop_tokens=stop, keep_state=True)
  assert out.conversation.cache_len == 32  # grows on demand (one copy per new bucket)
  history = [p + t for p, t in zip(PROMPTS, out.tokens)]
  for rnd in range(3):
    extra = random_prompts([3 + rnd, 1, 7], seed=100 + rnd)
    out = s.continue_generation(out.conversation, extra, max_new_tokens=10,
                                stop_tokens=stop, keep_state=True)
    history = [h + e for h, e in zip(history, extra)]
    fresh = s.generate(history, max_new_tokens=10, stop_tokens=stop)
    assert out.tokens == fresh.tokens, f"round {rnd + 1}"
    for a, b in zip(out.logprobs, fresh.logprobs):
      np.testing.assert_allclose(a, b, atol=1e-4)
    history = [h + t for h, t in zip(history, out.tokens)]


def test_forked_samples_continue_independently(lm):
  s = sampling.Sampler.from_model(lm)
  out = s.generate(PROMPTS[:2], max_new_tokens=5, temperature=1.0, num_samples=2, seed=1,
                   keep_state=True, cache_len=64)
  extra = random_prompts([2, 4, 1, 3], seed=8)
  cont = s.continue_generation(out.conversation, extra, max_new_tokens=6)
  history = [PROMPTS[r // 2] + t + e for r, (t, e) in enumerate(zip(out.tokens, extra))]
  assert cont.tokens == s.generate(history, max_new_tokens=6).tokens


def test_consumed_conversation_and_full_cache_raise(lm):
  graphdef, params = models.split(lm)
  s = sampling.Sampler(graphdef, params, max_cache_len=64)
  out = s.generate(PROMPTS, max_new_tokens=4, keep_state=True, cache_len=48)  # 64 slots
  conv = out.conversation
  assert conv.cache_len == 64 and conv.slot == 16 + 3
  with pytest.raises(ValueError, match="max_cache_len"):
    s.extend(conv, [[1] * 50] * 3)
  s.continue_generation(conv, [[1], [2], [3]], max_new_tokens=2)
  with pytest.raises(ValueError, match="already continued"):
    s.continue_generation(conv, [[1], [2], [3]], max_new_tokens=2)
  with pytest.raises(ValueError, match="rows"):
    s.extend(out.conversation.__class__(**{**out.conversation.__dict__, "consumed": False}),
             [[1]])
