"""Calls in the same shape bucket never compile again."""
import jax
import pytest
from conftest import random_prompts

from cai_jax import sampling
from cai_jax.sampling import engine


@pytest.fixture
def compile_counter():
  events = []

  def listener(name, *args, **kwargs):
    if name == "/jax/core/compile/backend_compile_duration":
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)


def _sizes():
  return engine.prefill._cache_size(), engine.decode._cache_size(), engine.extend._cache_size()


def test_same_bucket_does_not_recompile(lm, compile_counter):
  s = sampling.Sampler.from_model(lm)
  kw = dict(temperature=0.7, top_p=0.9, stop_tokens=[3])
  out = s.generate(random_prompts([3, 10, 6], seed=0), max_new_tokens=10, keep_state=True,
                   cache_len=64, seed=0, **kw)
  s.continue_generation(out.conversation, random_prompts([2, 5, 7], seed=1),
                        max_new_tokens=9, **kw)
  sizes = _sizes()
  compile_counter.clear()
  # Different prompts, lengths, batch size, budget, seed, temperature, top-p and stop
  # tokens; all in the same buckets (prompt 16, batch 4, new tokens 16, chunk 16).
  kw = dict(temperature=1.3, top_p=0.8, stop_tokens=[4, 9])
  out = s.generate(random_prompts([16, 12, 1, 9], seed=2), max_new_tokens=13,
                   keep_state=True, cache_len=64, seed=5, **kw)
  s.continue_generation(out.conversation, random_prompts([14, 1, 3, 8], seed=3),
                        max_new_tokens=16, **kw)
  assert compile_counter == [], f"{len(compile_counter)} compilations in the same bucket"
  assert _sizes() == sizes


def test_new_bucket_compiles_once(lm, compile_counter):
  s = sampling.Sampler.from_model(lm)
  s.generate(random_prompts([40, 7], seed=0), max_new_tokens=40)
  before = _sizes()
  s.generate(random_prompts([33, 47], seed=1), max_new_tokens=35)   # prompt bucket 48 again
  assert _sizes() == before
