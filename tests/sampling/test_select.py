"""(c) temperature / top-k / top-p masks: statistical checks with a fixed seed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import full_logits, random_prompts

from cai_jax import sampling
from cai_jax.sampling.select import Mode, first_argmax, make_mode, select

LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], np.float32)
N = 40_000


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _expected(temperature, top_k, top_p):
  p = _softmax(LOGITS / temperature)
  order = np.argsort(-p)
  keep = np.zeros_like(p, bool)
  if top_k:
    keep[order[:top_k]] = True
  else:
    keep[:] = True
  ps = p[order] * keep[order]
  ps = ps / ps.sum()
  before = np.cumsum(ps) - ps
  nucleus = np.zeros_like(keep)
  nucleus[order[(before < top_p) & keep[order]]] = True
  q = np.where(nucleus, p, 0.0)
  return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0), (0.7, 5, 1.0),
    (1.0, 0, 0.7), (1.0, 0, 0.3), (1.5, 4, 0.8)])
def test_c_sampling_frequencies(temperature, top_k, top_p):
  mode = make_mode(temperature, top_k, top_p)
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (N, LOGITS.size))
  fn = jax.jit(select, static_argnames="mode")
  toks, lps = fn(logits, jax.random.key(0), jnp.float32(temperature), jnp.float32(top_p),
                 mode=mode)
  freq = np.bincount(np.asarray(toks), minlength=LOGITS.size) / N
  want = _expected(temperature, top_k, top_p)
  assert np.all(freq[want == 0] == 0), (freq, want)  # masked tokens never sampled
  sigma = np.sqrt(want * (1 - want) / N)
  np.testing.assert_array_less(np.abs(freq - want), 5 * sigma + 1e-3)
  base = np.asarray(jax.nn.log_softmax(jnp.asarray(LOGITS)))
  np.testing.assert_allclose(np.asarray(lps), base[np.asarray(toks)], atol=1e-6)


def test_greedy_is_argmax():
  logits = jax.random.normal(jax.random.key(1), (64, 50))
  toks, _ = select(logits, jax.random.key(0), jnp.float32(1.0), jnp.float32(1.0), Mode())
  np.testing.assert_array_equal(toks, np.argmax(np.asarray(logits), -1))


def test_make_mode_static_parts():
  assert make_mode(0.0, 5, 0.5) == Mode(greedy=True)
  assert make_mode(1.0, 5, 0.5) == Mode(greedy=False, top_k=5, top_p=True)
  assert make_mode(1.0, 0, 1.0) == Mode(greedy=False, top_k=0, top_p=False)


def test_generate_top_k_tokens_are_in_model_top_k(lm):
  prompts = random_prompts([4, 9, 2, 6], seed=2)
  out = sampling.generate(lm, prompts, max_new_tokens=12, temperature=1.5, top_k=2, seed=4)
  fulls = full_logits(lm, [p + t for p, t in zip(prompts, out.tokens)])
  for prompt, toks, full in zip(prompts, out.tokens, fulls):
    top2 = np.argsort(-full[len(prompt) - 1:-1], axis=-1)[:, :2]
    assert all(t in row for t, row in zip(toks, top2))


def test_first_argmax_matches_numpy_on_ties_nan_and_inf():
  """``first_argmax`` (a max and a min, the greedy path) against NumPy's argmax, which
  returns the first maximum and, with NaNs, the first NaN."""
  rng = np.random.default_rng(3)
  x = rng.integers(-3, 4, size=(64, 97)).astype(np.float32)   # many exact ties per row
  x[5, :] = -np.inf
  x[6, 10], x[6, 40] = np.nan, np.nan
  x[7, 0] = np.inf
  x[8, :] = 0.0
  x[9, 96] = 9.0
  got = np.asarray(jax.jit(first_argmax)(jnp.asarray(x)))
  np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
  assert got.dtype == np.int32 and (got[5], got[6], got[7], got[8], got[9]) == (0, 10, 0, 0, 96)
