"""Length policy: rows never pass the model's max_seq_len (issue 17 case 5).

A tiny model with ``max_seq_len=64`` (the same weights as the shared ``lm``, whose limit
is 2048) checks that calls within the limit are unchanged, that "error" raises before
any device work, and that "truncate" keeps the last tokens and stops rows at the limit.
"""
import dataclasses
import logging
import time

import gin
import jax
import numpy as np
import pytest
from conftest import CFG, random_prompts

from cai_jax import models, sampling
from cai_jax.sampling import engine, limits

L = 64


@pytest.fixture(scope="module")
def short_lm():
  return models.build(dataclasses.replace(CFG, max_seq_len=L), seed=7)


def _sampler(model, overflow=None):
  return sampling.Sampler.from_model(model, overflow=overflow)


def _forbid(monkeypatch, *names):
  """Makes the named engine programs fail if a call reaches them."""
  for name in names:
    def boom(*args, _name=name, **kwargs):
      raise AssertionError(f"engine.{_name} ran")
    monkeypatch.setattr(engine, name, boom)


def _spy(fn, name, calls):
  def spy(*args, **kwargs):
    calls.append(name)
    return fn(*args, **kwargs)
  return spy


def _assert_same(got, want, exact=True):
  assert got.tokens == want.tokens
  for a, b in zip(got.logprobs, want.logprobs):
    if exact:
      np.testing.assert_array_equal(a, b)
    else:
      np.testing.assert_allclose(a, b, atol=1e-5)


# -- within the limit: nothing changes ---------------------------------------------------


def test_same_weights(lm, short_lm):
  a, b = models.split(lm)[1], models.split(short_lm)[1]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("overflow", ["truncate", "error"])
def test_within_limit_is_unchanged(lm, short_lm, overflow):
  """Calls that fit give the same tokens and log-probs as on the 2048-token model."""
  prompts = random_prompts([6, 13, 2], seed=21)
  kw = dict(max_new_tokens=10, stop_tokens=[9, 40])
  s, ref = _sampler(short_lm, overflow), _sampler(lm)
  _assert_same(s.generate(prompts, **kw), ref.generate(prompts, **kw))
  _assert_same(s.generate(prompts, max_new_tokens=12, temperature=1.0, top_p=0.9,
                          num_samples=3, seed=4),
               ref.generate(prompts, max_new_tokens=12, temperature=1.0, top_p=0.9,
                            num_samples=3, seed=4))
  _assert_same(s.generate(prompts, **kw), sampling.generate(lm, prompts, **kw))
  out, want = s.generate(prompts, keep_state=True, **kw), ref.generate(prompts, keep_state=True,
                                                                      **kw)
  extra = random_prompts([3, 1, 7], seed=100)
  _assert_same(s.continue_generation(out.conversation, extra, **kw),
               ref.continue_generation(want.conversation, extra, **kw))
  assert s.length_stats == {"truncated_prompts": 0, "rows_cut_at_limit": 0}


def test_exactly_at_the_limit_fits(lm, short_lm):
  """prompt + max_new_tokens == max_seq_len: no truncation; the buckets clamp to the limit
  (different shapes than on the long model, so log-probs agree to float tolerance)."""
  prompts = random_prompts([40, 17], seed=3)
  out = _sampler(short_lm, "error").generate(prompts, max_new_tokens=24, keep_state=True)
  assert out.conversation.cache_len == L and out.dropped == [0, 0]
  _assert_same(out, _sampler(lm).generate(prompts, max_new_tokens=24), exact=False)
  assert [len(p) + len(t) for p, t in zip(prompts, out.tokens)] == [L, 41]


# -- error ----------------------------------------------------------------------------------


def test_error_names_rows_before_any_device_work(short_lm, monkeypatch):
  s = _sampler(short_lm, "error")
  _forbid(monkeypatch, "prefill", "extend", "decode")
  prompts = random_prompts([5, 7800, 30, 60], seed=1)
  t0 = time.perf_counter()
  with pytest.raises(ValueError) as err:
    s.generate(prompts, max_new_tokens=16)
  assert time.perf_counter() - t0 < 1.0
  msg = str(err.value)
  assert "max_seq_len=64" in msg and "row 1: 7800 prompt + 16 more = 7816" in msg
  assert "row 2" not in msg and "row 3: 60 prompt" in msg and "row 0" not in msg
  assert s.length_stats == {"truncated_prompts": 0, "rows_cut_at_limit": 0}


def test_error_names_first_rows_only():
  msg = limits.overflow_message("prompt", list(range(9)), ["x"] * 9, 64)
  assert "row 4: x" in msg and "row 5" not in msg and "and 4 more" in msg


def test_error_on_continuation_and_decode(short_lm, monkeypatch):
  s = _sampler(short_lm, "error")
  prompts = random_prompts([6, 20], seed=2)
  out = s.generate(prompts, max_new_tokens=10, keep_state=True)     # lengths 16, 30
  _forbid(monkeypatch, "prefill", "extend", "decode", "grow", "pack")
  with pytest.raises(ValueError, match=r"row 1: 30 in the sequence \+ 30 continuation "
                                       r"\+ 10 more = 70 tokens"):
    s.continue_generation(out.conversation, random_prompts([2, 30], seed=3), max_new_tokens=10)
  assert not out.conversation.consumed                   # still usable
  monkeypatch.undo()
  conv, logits = s.start(prompts)                       # nothing reserved: decode checks
  _forbid(monkeypatch, "decode", "grow", "pack")
  with pytest.raises(ValueError, match=r"row 1: 20 in the sequence \+ 50 more"):
    s.decode(conv, logits, max_new_tokens=50)


# -- truncate -------------------------------------------------------------------------------


def test_truncate_keeps_the_last_tokens(short_lm):
  s = _sampler(short_lm)
  prompts = random_prompts([5, 100, 48, 49, 7800], seed=5)
  out = s.generate(prompts, max_new_tokens=16, keep_state=True)
  room = L - 16
  want = s.generate([p[-room:] for p in prompts], max_new_tokens=16)
  _assert_same(out, want)
  assert out.dropped == [0, 52, 0, 1, 7800 - room]
  assert out.at_limit == [False] * 5
  assert out.conversation.cache_len <= L
  assert s.length_stats == {"truncated_prompts": 3, "rows_cut_at_limit": 0}


def test_decode_stops_at_the_limit(lm, short_lm):
  """A row that would run past max_seq_len stops there, as if its budget ended; rows of
  different lengths decode together within a cache of max_seq_len slots (it is packed,
  then written round), each exactly as without the limit."""
  s = _sampler(short_lm)
  prompts = random_prompts([10, 50, 3], seed=6)
  conv, logits = s.start(prompts)                     # nothing reserved, nothing dropped
  out = s.decode(conv, logits, max_new_tokens=40, keep_state=True)
  assert [len(p) + len(t) for p, t in zip(prompts, out.tokens)] == [50, L, 43]
  assert out.at_limit == [False, True, False]
  assert out.conversation.cache_len == L
  free = _sampler(lm).generate(prompts, max_new_tokens=40)
  assert out.tokens == [t[:len(o)] for t, o in zip(free.tokens, out.tokens)]
  for got, want in zip(out.logprobs, free.logprobs):
    np.testing.assert_allclose(got, want[:len(got)], atol=1e-5)
  assert s.length_stats == {"truncated_prompts": 0, "rows_cut_at_limit": 1}
  # The decode went round the cache: continuing prefills the rows afresh.
  extra = random_prompts([2, 1, 3], seed=7)
  cont = s.continue_generation(out.conversation, extra, max_new_tokens=5)
  seqs = [p + t + e for p, t, e in zip(prompts, out.tokens, extra)]
  assert cont.dropped == [0, 6, 0]                     # row 1 keeps its last L - 5 tokens
  _assert_same(cont, s.generate([q[-(L - 5):] for q in seqs], max_new_tokens=5))


def test_a_full_row_generates_nothing(short_lm):
  s = _sampler(short_lm)
  conv, logits = s.start(random_prompts([L, L], seed=4))
  out = s.decode(conv, logits, max_new_tokens=5, keep_state=True)
  assert out.tokens == [[], []] and out.at_limit == [True, True]
  assert out.conversation is conv and not conv.consumed
  assert s.length_stats == {"truncated_prompts": 0, "rows_cut_at_limit": 2}


def test_budget_past_the_limit_keeps_one_prompt_token(short_lm):
  s = _sampler(short_lm)
  out = s.generate(random_prompts([10, 3], seed=7), max_new_tokens=100)
  assert out.dropped == [9, 2] and [len(t) for t in out.tokens] == [L - 1, L - 1]
  assert out.at_limit == [True, True]
  assert s.length_stats == {"truncated_prompts": 2, "rows_cut_at_limit": 2}


def test_continuation_overflow_refills_the_last_tokens(lm, short_lm):
  """A conversation continued past the limit is prefilled afresh from the last tokens of
  each row's sequence, as a fresh prompt would be; rows that fit are unchanged."""
  s = _sampler(short_lm)
  prompts = random_prompts([6, 20, 3], seed=8)
  out = s.generate(prompts, max_new_tokens=10, keep_state=True)       # lengths 16, 30, 13
  history = [p + t for p, t in zip(prompts, out.tokens)]
  extra = random_prompts([30, 30, 2], seed=9)
  conv = out.conversation
  cont = s.continue_generation(conv, extra, max_new_tokens=20, keep_state=True)
  assert conv.consumed and cont.dropped == [2, 16, 0]                 # keep L - 20 = 44
  seqs = [h + e for h, e in zip(history, extra)]
  _assert_same(cont, s.generate([q[-44:] for q in seqs], max_new_tokens=20))
  _assert_same(cont, _sampler(lm).generate([q[-44:] for q in seqs], max_new_tokens=20),
               exact=False)
  assert cont.conversation.cache_len <= L
  assert cont.conversation.lengths == [L, L, 35] and cont.at_limit == [False] * 3
  assert s.length_stats == {"truncated_prompts": 2, "rows_cut_at_limit": 0}


def test_extend_then_decode_stops_at_the_limit(lm, short_lm):
  """Decoding more than ``extend`` reserved: rows stop at the limit, others go on."""
  s = _sampler(short_lm)
  prompts = random_prompts([6, 20, 3], seed=8)
  out = s.generate(prompts, max_new_tokens=10, keep_state=True)       # lengths 16, 30, 13
  extra = random_prompts([30, 4, 2], seed=9)
  conv, logits = s.extend(out.conversation, extra)                   # reserves 1 token
  assert conv.lengths == [46, 34, 15] and conv.dropped == [0, 0, 0]
  cont = s.decode(conv, logits, max_new_tokens=40, keep_state=True)
  assert cont.conversation.lengths == [L, L, 55]
  assert cont.at_limit == [True, True, False]
  seqs = [p + t + e for p, t, e in zip(prompts, out.tokens, extra)]
  free = _sampler(lm).generate(seqs, max_new_tokens=40)
  assert cont.tokens == [t[:len(c)] for t, c in zip(free.tokens, cont.tokens)]
  assert cont.conversation.cache_len == L
  assert s.length_stats == {"truncated_prompts": 0, "rows_cut_at_limit": 2}
  # Continued past the limit: full rows are prefilled afresh from their last tokens.
  again = s.continue_generation(cont.conversation, [[5], [6], [7]], max_new_tokens=4)
  assert again.dropped == [5, 5, 0] and [len(t) for t in again.tokens] == [4, 4, 4]
  assert s.length_stats == {"truncated_prompts": 2, "rows_cut_at_limit": 2}


def test_chain_packs_padding_instead_of_passing_the_limit(lm, short_lm, monkeypatch):
  """Ragged rows leave padding slots; near the limit the cache is packed, not grown,
  and every round still equals a fresh prefill of the history."""
  s, ref = _sampler(short_lm, "error"), _sampler(lm)
  calls = []
  for name in ("prefill", "pack"):
    monkeypatch.setattr(engine, name, _spy(getattr(engine, name), name, calls))
  prompts = random_prompts([2, 13], seed=10)
  out = s.generate(prompts, max_new_tokens=10, keep_state=True)
  history = [p + t for p, t in zip(prompts, out.tokens)]
  for rnd in range(3):
    extra = random_prompts([1, 1], seed=20 + rnd)
    out = s.continue_generation(out.conversation, extra, max_new_tokens=10, keep_state=True)
    history = [h + e for h, e in zip(history, extra)]
    _assert_same(out, ref.generate(history, max_new_tokens=10), exact=False)
    history = [h + t for h, t in zip(history, out.tokens)]
    assert out.conversation.cache_len <= L
  assert max(map(len, history)) == 56 and out.conversation.slot <= L
  assert calls.count("pack") == 2 and calls.count("prefill") == 1 + 3    # 3: ref's


# -- counters, warnings, gin --------------------------------------------------------------


def test_one_warning_per_call(short_lm, caplog):
  s = _sampler(short_lm)
  with caplog.at_level(logging.WARNING, logger=limits.__name__):
    s.generate(random_prompts([100, 90, 5], seed=11), max_new_tokens=100)
    s.generate(random_prompts([5], seed=12), max_new_tokens=8)
  records = [r for r in caplog.records if r.name == limits.__name__]
  assert len(records) == 1
  assert "3 rows truncated to their last tokens" in records[0].getMessage()
  assert "3 rows stopped at the limit" in records[0].getMessage()


def test_gin_binding_sets_the_default_policy(short_lm):
  try:
    with gin.unlock_config():
      gin.parse_config("length_policy.overflow = 'error'")
    assert _sampler(short_lm).overflow == "error"
    assert _sampler(short_lm, "truncate").overflow == "truncate"   # explicit wins
    with pytest.raises(ValueError, match="row 0: 100 prompt"):
      _sampler(short_lm).generate(random_prompts([100]), max_new_tokens=4)
  finally:
    with gin.unlock_config():
      gin.clear_config()
  assert _sampler(short_lm).overflow == "truncate"
  with pytest.raises(ValueError, match="overflow must be one of"):
    _sampler(short_lm, "wrap")


# -- scoring --------------------------------------------------------------------------------


def test_scoring_truncates_prompts(short_lm):
  s = _sampler(short_lm)
  prompts = random_prompts([100, 10], seed=13)
  options = [random_prompts([1, 3], seed=14)] * 2
  np.testing.assert_allclose(sampling.option_logprobs(s, prompts, options),
                             sampling.option_logprobs(s, [prompts[0][-(L - 3):], prompts[1]],
                                                      options), atol=1e-5)
  conts = random_prompts([20, 5], seed=15)
  got = sampling.sequence_logprobs(s, prompts, conts)
  want = sampling.sequence_logprobs(s, [prompts[0][-(L - 20):], prompts[1]], conts)
  np.testing.assert_allclose(got.total, want.total, atol=1e-5)
  cands = sampling.candidate_logprobs(s, prompts, [1, 2])
  np.testing.assert_allclose(cands, sampling.candidate_logprobs(
      s, [prompts[0][-L:], prompts[1]], [1, 2]), atol=1e-5)
  assert s.length_stats["truncated_prompts"] == 3
  with pytest.raises(ValueError, match="row 0: 100 prompt"):
    sampling.option_logprobs(_sampler(short_lm, "error"), prompts, options)
  with pytest.raises(ValueError, match="no room for its prompt"):
    sampling.sequence_logprobs(s, prompts, random_prompts([L, 3], seed=16))


def test_packing_and_wrapping_on_a_mesh(short_lm, n_devices):
  """Packing, writing round the cache and refilling keep their results on 8 devices."""
  from cai_jax.sharding import make_mesh  # pylint: disable=import-outside-toplevel

  def run(mesh):
    s = sampling.Sampler.from_model(short_lm, mesh=mesh)
    prompts = random_prompts([10, 50, 3], seed=6)
    conv, logits = s.start(prompts)
    out = s.decode(conv, logits, max_new_tokens=40, keep_state=True)     # packs, wraps
    cont = s.continue_generation(out.conversation, random_prompts([2, 1, 3], seed=7),
                                 max_new_tokens=5, keep_state=True)     # refills
    again = s.continue_generation(cont.conversation, [[4], [5], [6]], max_new_tokens=5)
    return out, cont, again

  for got, want in zip(run(make_mesh(2, 2, 2)), run(None)):
    _assert_same(got, want, exact=False)
