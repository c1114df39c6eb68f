"""Continuous batching (``sampling.continuous.run_jobs``) against independent references.

References: the model's full forward over the real tokens (log-probs of what was sampled,
greedy choices), and the static sampler with the same row seeds (``Sampler.generate`` /
``continue_generation`` with ``row_seeds``), which shares no code with the row engine
beyond the model and the token selection.
"""
import dataclasses

import jax
import numpy as np
import pytest
from conftest import CFG, full_logprobs, random_prompts

from cai_jax import models, sampling
from cai_jax.sampling import rows
from cai_jax.sampling.continuous import Request, run_jobs
from cai_jax.sampling.select import Mode
from cai_jax.sharding import make_mesh

PROMPTS = random_prompts([5, 17, 30, 9, 22, 3, 40, 11, 2, 26], seed=1)
EXTRA = random_prompts([4, 8, 2, 6, 3, 5, 7, 1, 9, 2], seed=2)
SEEDS = [100 + i for i in range(len(PROMPTS))]
STOPS = (5, 6, 7)
KW = dict(max_new_tokens=20, temperature=1.0, stop_tokens=STOPS)


def _single(i):
  reply = yield Request(PROMPTS[i], SEEDS[i])
  return i, [reply]


def _two_turns(i):
  first = yield Request(PROMPTS[i], SEEDS[i])
  second = yield Request(PROMPTS[i] + first.tokens + EXTRA[i], SEEDS[i] + 1)
  return i, [first, second]


def _run(sampler, job, n=len(PROMPTS), **kw):
  out = {}
  run_jobs(sampler, (job(i) for i in range(n)), on_done=lambda v: out.__setitem__(*v),
           **{**KW, "cache_len": 128, **kw})
  return [out[i] for i in range(n)]


@pytest.fixture(scope="module")
def sampler(lm):
  return sampling.Sampler.from_model(lm)


def test_one_turn_equals_static_batch_and_full_forward(lm, sampler):
  """Ten prompts through three rows (each row refilled several times) sample what the
  static batch samples with the same row seeds; log-probs are the full forward's."""
  got = _run(sampler, _single, batch_size=3)
  want = sampler.generate(PROMPTS, row_seeds=SEEDS, **KW)
  for i, (reply,) in enumerate(got):
    assert reply.tokens == want.tokens[i]
    assert not reply.continued and reply.dropped == 0 and not reply.at_limit
    assert reply.tokens and (reply.tokens[-1] in STOPS or len(reply.tokens) == 20)
    ref = full_logprobs(lm, [PROMPTS[i] + reply.tokens])[0]
    n = len(PROMPTS[i])
    np.testing.assert_allclose(
        reply.logprobs, ref[np.arange(n - 1, n - 1 + len(reply.tokens)), reply.tokens],
        atol=1e-5)


def test_second_turn_continues_the_row_cache(lm, sampler):
  """A request that extends the row's sequence writes only the new tokens; the result
  equals the static sampler's continuation and the full forward."""
  got = _run(sampler, _two_turns, batch_size=4)
  first = sampler.generate(PROMPTS, row_seeds=SEEDS, keep_state=True, **KW)
  second = sampler.continue_generation(first.conversation, EXTRA,
                                       row_seeds=[s + 1 for s in SEEDS], **KW)
  for i, (a, b) in enumerate(got):
    assert a.tokens == first.tokens[i] and b.tokens == second.tokens[i]
    assert b.continued
    seq = PROMPTS[i] + a.tokens + EXTRA[i]
    ref = full_logprobs(lm, [seq + b.tokens])[0]
    np.testing.assert_allclose(
        b.logprobs, ref[np.arange(len(seq) - 1, len(seq) - 1 + len(b.tokens)), b.tokens],
        atol=1e-5)


def test_greedy_choices_are_the_full_forward_argmax(lm, sampler):
  got = _run(sampler, _two_turns, batch_size=2, temperature=0.0)
  for i, (a, b) in enumerate(got):
    seq = PROMPTS[i] + a.tokens + EXTRA[i] + b.tokens
    ref = full_logprobs(lm, [seq])[0]
    n = len(PROMPTS[i])
    assert a.tokens == [int(t) for t in np.argmax(ref[n - 1:n - 1 + len(a.tokens)], -1)]
    m = len(seq) - len(b.tokens)
    assert b.tokens == [int(t) for t in np.argmax(ref[m - 1:m - 1 + len(b.tokens)], -1)]


def test_batch_size_does_not_change_the_tokens(sampler):
  """Row keys: the same jobs through 1, 3 and 16 rows give the same tokens."""
  runs = [_run(sampler, _two_turns, batch_size=b) for b in (1, 3, 16)]
  for other in runs[1:]:
    assert [[r.tokens for r in job] for job in other] == \
        [[r.tokens for r in job] for job in runs[0]]


def test_row_seeds_make_static_draws_independent_of_the_batch(sampler):
  both = sampler.generate(PROMPTS[:2], row_seeds=SEEDS[:2], **KW)
  alone = sampler.generate(PROMPTS[1:2], row_seeds=SEEDS[1:2], **KW)
  assert both.tokens[1] == alone.tokens[0]
  with pytest.raises(ValueError, match="row_seeds"):
    sampler.generate(PROMPTS[:2], row_seeds=SEEDS[:3], **KW)


def test_request_that_is_not_an_extension_starts_the_row_afresh(sampler):
  def job(i):
    yield Request(PROMPTS[i], SEEDS[i])
    other = yield Request(EXTRA[i] + [9], SEEDS[i] + 2)   # not what the row holds
    again = yield Request(EXTRA[i] + [9] + other.tokens + [4], SEEDS[i] + 3, reuse=False)
    return i, [other, again]

  got = _run(sampler, job, n=4, batch_size=2)
  fresh = sampler.generate([EXTRA[i] + [9] for i in range(4)],
                           row_seeds=[SEEDS[i] + 2 for i in range(4)], **KW)
  for i, (other, again) in enumerate(got):
    assert not other.continued and not again.continued
    assert other.tokens == fresh.tokens[i]


def test_length_limit_truncates_like_the_sampler(lm):
  """With max_seq_len 64 a long continuation is started afresh from its last tokens,
  exactly as the static sampler's "truncate" policy does, and rows stop at the limit."""
  short = sampling.Sampler.from_model(
      models.build(dataclasses.replace(CFG, max_seq_len=64), seed=7), overflow="truncate")
  long_prompt = random_prompts([70], seed=5)[0]

  def job(i):
    reply = yield Request(long_prompt if i == 0 else PROMPTS[i], SEEDS[i])
    return i, [reply]

  got = _run(short, job, n=3, batch_size=2, cache_len=None)
  want = short.generate([long_prompt] + PROMPTS[1:3], row_seeds=SEEDS[:3], **KW)
  assert got[0][0].dropped == want.dropped[0] > 0
  for i in range(3):
    assert got[i][0].tokens == want.tokens[i]
  with pytest.raises(ValueError, match="max_seq_len"):
    _run(sampling.Sampler.from_model(short_lm_model(), overflow="error"), job, n=1,
         batch_size=1, cache_len=None)


def short_lm_model():
  return models.build(dataclasses.replace(CFG, max_seq_len=64), seed=7)


def test_rows_stop_at_the_limit_before_their_budget():
  """A budget beyond the limit: the row keeps one prompt token, like the sampler, and
  stops at max_seq_len (``at_limit``, counted in the sampler's length stats)."""
  s = sampling.Sampler.from_model(short_lm_model())
  prompt = random_prompts([50], seed=8)[0]

  def job(i):
    reply = yield Request(prompt, 1)
    return i, [reply]

  kw = dict(batch_size=1, cache_len=None, stop_tokens=(), max_new_tokens=70)
  (reply,), = _run(s, job, n=1, **kw)
  want = s.generate([prompt], row_seeds=[1], max_new_tokens=70, temperature=1.0)
  assert reply.tokens == want.tokens[0] and len(reply.tokens) == 63
  assert reply.at_limit and want.at_limit[0] and reply.dropped == want.dropped[0] == 49
  assert s.length_stats["rows_cut_at_limit"] >= 2


def test_mesh_matches_single_device(lm, sampler, n_devices):
  mesh = sampling.Sampler.from_model(lm, mesh=make_mesh(4, 1, 2))
  got = _run(mesh, _two_turns, batch_size=8)
  want = _run(sampler, _two_turns, batch_size=8)
  for a, b in zip(got, want):
    for x, y in zip(a, b):
      assert x.tokens == y.tokens
      np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)


def test_refill_keeps_other_rows_and_ignores_padding_entries(lm, sampler):
  """A refill of rows 1 and 3 (plus two padding entries) leaves rows 0 and 2 as they
  were, bit for bit."""
  import jax.numpy as jnp
  carry = rows.empty(cfg=lm.cfg, batch=4, cache_len=64, num_out=8)
  toks = np.asarray(random_prompts([12] * 4, seed=3), np.int32)
  full = lambda c, r, n: rows.refill(
      sampler.graphdef, sampler.params, c, jnp.asarray(r, jnp.int32),
      jnp.zeros(len(r), jnp.int32), jnp.asarray(toks[:len(r)]), jnp.full(len(r), n, jnp.int32),
      jnp.full(len(r), 1, jnp.int32), jnp.zeros(len(r), jnp.uint32),
      jnp.full(len(r), 4, jnp.int32), attend_len=64)
  carry = full(carry, [0, 1, 2, 3], 12)
  before = [np.asarray(layer["k"]).copy() for layer in carry.cache]
  carry = full(carry, [1, 3, 4, 4], 5)
  assert np.asarray(carry.len_b).tolist() == [12, 5, 12, 5]
  for b, layer in zip(before, carry.cache):
    np.testing.assert_array_equal(np.asarray(layer["k"])[[0, 2]], b[[0, 2]])



def test_run_on_the_live_slots_equals_the_whole_cache(lm, sampler):
  """``rows.run`` with ``attend_len`` below the cache length (the loop works on a copy of
  the live slots, put back at the end) samples what a run over the whole cache samples,
  leaves the slots past ``attend_len`` as they were, and holds the same keys below."""
  import jax.numpy as jnp
  carry = rows.empty(cfg=lm.cfg, batch=4, cache_len=256, num_out=32)
  toks = np.asarray(random_prompts([40] * 4, seed=4), np.int32)
  n = jnp.asarray([40, 13, 27, 2], jnp.int32)
  carry = rows.refill(sampler.graphdef, sampler.params, carry, jnp.arange(4, dtype=jnp.int32),
                      jnp.zeros(4, jnp.int32), jnp.asarray(toks), n, jnp.full(4, 1, jnp.int32),
                      jnp.arange(4, dtype=jnp.uint32), jnp.asarray([30, 30, 5, 30], jnp.int32),
                      attend_len=256)
  # Slots past the live part hold marks a run must not touch (a row's own slots above
  # its length are free; slot 200 is past every row's reach).
  carry = carry._replace(cache=[{k: x.at[:, :, 200].set(7.0) for k, x in layer.items()}
                                for layer in carry.cache])
  copy = lambda c: jax.tree.map(jnp.copy, c)
  args = (jnp.float32(1.0), jnp.float32(1.0), jnp.asarray([5, 6, -1], jnp.int32), jnp.int32(0))
  cut = rows.run(sampler.graphdef, sampler.params, copy(carry), *args, mode=Mode(greedy=False),
                 attend_len=128)
  whole = rows.run(sampler.graphdef, sampler.params, copy(carry), *args, mode=Mode(greedy=False),
                   attend_len=256)
  for f in ("len_b", "count_b", "active_b", "tokens_bn"):
    np.testing.assert_array_equal(np.asarray(getattr(cut, f)), np.asarray(getattr(whole, f)))
  assert int(np.max(np.asarray(cut.count_b))) > 0
  np.testing.assert_allclose(cut.logprobs_bn, whole.logprobs_bn, atol=1e-5)
  lens = np.asarray(cut.len_b)
  for a, b in zip(cut.cache, whole.cache):
    for name in ("k", "v"):
      x, y = np.asarray(a[name]), np.asarray(b[name])
      assert (x[:, :, 200] == 7.0).all() and x.shape == y.shape
      for r, ln in enumerate(lens):
        np.testing.assert_allclose(x[r, :, :ln], y[r, :, :ln], atol=1e-5)

def test_bad_arguments():
  with pytest.raises(ValueError, match="refill_fraction"):
    run_jobs(None, [], batch_size=1, max_new_tokens=1, refill_fraction=0.0)


def test_rows_cache_grows_on_demand(sampler, monkeypatch):
  """Starting from 16 slots, the rows' cache doubles as requests need (to 64, then 128);
  the tokens are those of a run whose cache is never grown."""
  from cai_jax.sampling import continuous
  want = _run(sampler, _two_turns, batch_size=3)
  sizes = []
  grow = rows.grow

  def spy(carry, *, cache_len):
    sizes.append(cache_len)
    return grow(carry, cache_len=cache_len)

  monkeypatch.setattr(continuous, "MIN_CACHE", 16)
  monkeypatch.setattr(rows, "grow", spy)
  got = _run(sampler, _two_turns, batch_size=3)
  assert sizes == [64, 128]   # first turns need up to 40 + 20 slots, second ones 89
  assert [[r.tokens for r in job] for job in got] == [[r.tokens for r in job] for job in want]
