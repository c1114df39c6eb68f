"""Attention reads only the live part of a long cache (``buckets.attend_bucket``).

The references are independent of the segmented path: the model's full forward over the
real tokens, and the single-program decode whose steps attend to every slot.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CFG, full_logits, random_prompts

from cai_jax import models, sampling
from cai_jax.sampling import buckets, engine
from cai_jax.sampling.select import make_mode


@pytest.fixture
def attend_lens(monkeypatch):
  """Records the ``attend_len`` of every decode segment and chunk extension."""
  seen = {"decode": [], "extend": []}
  real_run, real_extend = engine.decode_run, engine.extend

  def run(*args, **kwargs):
    seen["decode"].append(kwargs["attend_len"])
    return real_run(*args, **kwargs)

  def extend(*args, **kwargs):
    seen["extend"].append(kwargs.get("attend_len"))
    return real_extend(*args, **kwargs)

  monkeypatch.setattr(engine, "decode_run", run)
  monkeypatch.setattr(engine, "extend", extend)
  return seen


def test_attend_bucket():
  assert buckets.attend_bucket(1, 2048) == 128
  assert buckets.attend_bucket(129, 2048) == 256
  assert buckets.attend_bucket(129, 192) == 192
  assert buckets.attend_bucket(2049, 2048) == 2048     # writes went round: whole cache
  assert buckets.attend_bucket(64, 64) == 64



def test_prompt_bucket():
  """Powers of two with a step at three quarters of each octave above 32 (hand-worked)."""
  want = {1: 16, 16: 16, 17: 32, 32: 32, 33: 48, 41: 48, 48: 48, 49: 64, 64: 64, 65: 96,
          96: 96, 97: 128, 129: 192, 193: 256, 385: 512}
  assert {n: buckets.prompt_bucket(n) for n in want} == want
  assert buckets.prompt_bucket(41, 44) == 44          # near the limit: what is left
  assert buckets.prompt_bucket(41, 40) == 41          # never below the prompt

def test_long_cache_logits_equal_full_forward_across_segments(lm, attend_lens):
  """Prompts padded to 64 slots, 90 greedy steps in a 1,024-slot cache: the steps before
  slot 128 attend to 128 slots, the rest to 256, and every step's logits are the full
  forward's."""
  prompts = random_prompts([60, 37, 50], seed=3)
  s = sampling.Sampler.from_model(lm)
  out = s.generate(prompts, max_new_tokens=90, cache_len=1024, collect_logits=True)
  assert attend_lens["decode"] == [128, 256]
  step_logits = np.asarray(out.step_logits)
  for i, (p, t) in enumerate(zip(prompts, out.tokens)):
    assert len(t) == 90
    ref = full_logits(lm, [p + t], length=256)[0]
    np.testing.assert_allclose(step_logits[i, :90], ref[len(p) - 1:len(p) + 89],
                               atol=1e-5, rtol=1e-5)


def _single_program(sampler, prompts, new, cache_len, **kw):
  """The same sampling with the single-program decode attending to every slot."""
  conv, logits = sampler.start(prompts, cache_len=cache_len, min_free=new)
  budget = np.full((conv.batch,), new, np.int32)
  _, out = engine.decode(sampler.graphdef, sampler.params, conv.state, logits,
                         jax.random.key(kw["seed"]), jnp.float32(kw["temperature"]),
                         jnp.float32(kw["top_p"]),
                         jnp.asarray(buckets.stop_array(kw["stop_tokens"])),
                         jnp.asarray(budget), num_out=buckets.length_bucket(new),
                         mode=make_mode(kw["temperature"], 0, kw["top_p"]))
  toks, lps, counts = jax.device_get((out.tokens_bn, out.logprobs_bn, out.counts_b))
  return ([toks[i, :counts[i]].tolist() for i in range(len(prompts))],
          [lps[i, :counts[i]] for i in range(len(prompts))])


def test_sampled_tokens_equal_the_whole_cache_decode(lm, attend_lens):
  """Temperature sampling with a stop token: the segmented decode (attention lengths 256,
  then 512) draws the same tokens with the same log-probs as one loop over every slot;
  the PRNG step carries over between segments."""
  prompts = random_prompts([120, 5, 64, 127], seed=4)
  kw = dict(temperature=1.0, top_p=0.9, seed=11, stop_tokens=[7])
  s = sampling.Sampler.from_model(lm)
  out = s.generate(prompts, max_new_tokens=200, cache_len=2048, **kw)
  assert attend_lens["decode"] == [256, 512]
  assert min(map(len, out.tokens)) < 200 < 1 + max(map(len, out.tokens)) + 127
  ref_toks, ref_lps = _single_program(s, prompts, 200, 2048, **kw)
  assert out.tokens == ref_toks
  for got, want in zip(out.logprobs, ref_lps):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_continuation_in_a_long_cache_equals_full_forward(lm, attend_lens):
  """A kept conversation continued in a 2,048-slot cache: the chunk attends to the live
  bucket only, and the continuation's greedy logits are the full forward's."""
  prompts = random_prompts([30, 12], seed=5)
  extra = random_prompts([20, 9], seed=6)
  s = sampling.Sampler.from_model(lm)
  first = s.generate(prompts, max_new_tokens=10, cache_len=2048, keep_state=True)
  second = s.continue_generation(first.conversation, extra, max_new_tokens=12,
                                 collect_logits=True)
  assert attend_lens["extend"] == [128]
  assert set(attend_lens["decode"]) == {128}
  for i in range(2):
    seq = prompts[i] + first.tokens[i] + extra[i]
    ref = full_logits(lm, [seq + second.tokens[i]], length=128)[0]
    np.testing.assert_allclose(np.asarray(second.step_logits)[i, :12],
                               ref[len(seq) - 1:len(seq) + 11], atol=1e-5, rtol=1e-5)


def test_sliding_window_model_in_a_long_cache():
  """Sliding-window layers mask by key positions; with the live slice of a long cache the
  logits still equal the full forward's (window 16, prompts padded to 128 slots)."""
  cfg = models.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, init_std=0.1, sliding_window=16,
                           layer_types=("sliding_attention", "full_attention"))
  model = models.build(cfg, seed=2)
  prompts = random_prompts([110, 40], seed=7)
  out = sampling.Sampler.from_model(model).generate(prompts, max_new_tokens=40,
                                                    cache_len=1024, collect_logits=True)
  for i, (p, t) in enumerate(zip(prompts, out.tokens)):
    ref = full_logits(model, [p + t], length=256)[0]
    np.testing.assert_allclose(np.asarray(out.step_logits)[i, :40],
                               ref[len(p) - 1:len(p) + 39], atol=1e-5, rtol=1e-5)
