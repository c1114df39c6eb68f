"""Continuous batching for generation jobs: a row that finishes a turn gets new work at once.

A *job* is a generator that yields ``Request``s (the whole token sequence to sample a
continuation of, and the turn's seed) and receives a ``Reply`` for each: a single answer,
or a multi-turn chain such as SL-CAI's critique -> revision, whose next request depends on
the previous reply. ``run_jobs`` keeps ``batch_size`` rows busy: each decode segment runs
until a share of the active rows has finished (``refill_fraction``); the host then hands
those rows their job's next request, or a new job, and one ``rows.refill`` call writes the
new tokens. The batch no longer waits for its longest row at every turn.

A request whose sequence extends what its row already holds (same job, pending token
included) writes only the new tokens after it (the KV cache is carried between turns, as
``Sampler.continue_generation`` does); any other request starts the row afresh. Rows
sample with the row keys of ``engine.decode``: the same requests give the same tokens as
``Sampler.generate(..., row_seeds=...)`` in a static batch (up to float summation order),
whatever the batch size. Sequences follow the sampler's length policy within
``min(cache_len, max_seq_len)`` tokens: a continuation that would not leave room for
``max_new_tokens`` is started afresh from the policy's truncation, like the sampler does.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Generator, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from cai_jax.sampling import buckets, limits, rows
from cai_jax.sampling import cache as cache_lib
from cai_jax.sampling.sampler import Sampler
from cai_jax.sampling.select import make_mode
from cai_jax.sharding.processes import fetch


@dataclasses.dataclass(frozen=True)
class Request:
  """One turn to sample: ``tokens`` is the whole sequence before it (non-empty);
  ``seed`` draws its tokens; ``reuse``: continue the row's cache when it is a prefix."""

  tokens: list[int]
  seed: int
  reuse: bool = True


@dataclasses.dataclass(frozen=True)
class Reply:
  """A sampled turn. ``continued``: only the new tokens were written after the row's
  cache; ``dropped``: tokens the length policy dropped from the front of the sequence;
  ``at_limit``: the row stopped at the length limit before ``max_new_tokens``."""

  tokens: list[int]
  logprobs: list[float]
  continued: bool
  dropped: int = 0
  at_limit: bool = False


Job = Generator[Request, Reply, Any]
MIN_CACHE = 512   # the rows' first cache length (slots), when the length cap allows


@dataclasses.dataclass
class _Row:
  job: Job | None = None
  history: list[int] | None = None     # the row's sequence, pending token included
  busy: bool = False                   # sampling a turn not yet handed back
  continued: bool = False
  dropped: int = 0
  budget: int = 0


class _Pool:
  """The host bookkeeping of ``run_jobs``: which job holds which row."""

  def __init__(self, sampler: Sampler, jobs: Iterable[Job], batch: int, limit: int,
               max_new_tokens: int, on_done: Callable[[Any], None] | None):
    self.sampler, self.jobs, self.limit, self.max_new = sampler, iter(jobs), limit, max_new_tokens
    self.rows = [_Row() for _ in range(batch)]
    self.on_done = on_done
    self.todo: list[tuple[int, Request]] = []      # (row, request) to write next
    self.tokens = 0

  def start_job(self, r: int) -> None:
    """Gives row ``r`` the next job that asks for anything (or leaves it idle)."""
    for job in self.jobs:
      try:
        request = next(job)
      except StopIteration as stop:
        self._done(stop.value)
        continue
      self.rows[r] = _Row(job=job)
      self.todo.append((r, request))
      return
    self.rows[r] = _Row()

  def _done(self, value: Any) -> None:
    if self.on_done is not None:
      self.on_done(value)

  def hand_back(self, r: int, tokens: list[int], logprobs: list[float], stopped: bool) -> None:
    """Sends a finished turn to its job and queues the job's next request."""
    row = self.rows[r]
    row.busy = False
    row.history = row.history + tokens
    self.tokens += len(tokens)
    at_limit = limits.cut_rows([len(tokens)], [row.budget], self.max_new, [stopped])[0]
    self.sampler._count(limits.CUT, int(at_limit))   # pylint: disable=protected-access
    try:
      request = row.job.send(Reply(tokens, logprobs, row.continued, row.dropped, at_limit))
    except StopIteration as stop:
      self._done(stop.value)
      self.start_job(r)
      return
    self.todo.append((r, request))

  def plan(self, r: int, request: Request) -> tuple[int, list[int]]:
    """Row ``r``'s write for ``request``: (first slot, tokens whose last one is pending)."""
    row, seq = self.rows[r], list(request.tokens)
    if not seq:
      raise ValueError("a Request needs at least one token")
    h = row.history
    if (request.reuse and h is not None and len(seq) > len(h) and seq[:len(h)] == h
        and len(seq) + self.max_new <= self.limit):
      row.continued, row.dropped, row.history = True, 0, seq
      return len(h) - 1, seq[len(h) - 1:]
    fit = self.sampler.fit([seq], reserve=self.max_new, what="sequence")
    row.continued, row.dropped, row.history = False, fit.dropped[0], fit.kept[0]
    return 0, fit.kept[0]


def run_jobs(sampler: Sampler, jobs: Iterable[Job], *, batch_size: int, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens=(), cache_len: int | None = None, refill_fraction: float = 0.25,
             on_done: Callable[[Any], None] | None = None) -> int:
  """Runs every job to its end with continuous batching; returns the tokens generated.

  Args:
    sampler: the model (and mesh) to sample with.
    jobs: generators of ``Request``s (see the module docstring); a job's return value
      goes to ``on_done`` when it ends.
    batch_size: rows decoded together (rounded up to divide over the mesh).
    max_new_tokens, temperature, top_k, top_p, stop_tokens: every turn's sampling.
    cache_len: a cap on the tokens of a row (default: the model's ``max_seq_len``); the
      rows' cache starts at ``MIN_CACHE`` slots (or the cap) and doubles when a request
      needs more, so memory follows the longest row rather than the cap.
    refill_fraction: a decode segment returns once this share of its active rows has
      finished; smaller refills sooner (more, smaller ``refill`` calls).
  """
  if max_new_tokens < 1 or not 0.0 < refill_fraction <= 1.0:
    raise ValueError("need max_new_tokens >= 1 and 0 < refill_fraction <= 1")
  limit = min(cache_len or sampler.max_len, sampler.max_len)
  batch = buckets.batch_bucket(batch_size, sampler._batch_multiple())   # pylint: disable=protected-access
  mode = make_mode(temperature, top_k, top_p)
  num_out = buckets.length_bucket(min(max_new_tokens, limit))
  args = (jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p),
          jnp.asarray(buckets.stop_array(stop_tokens)))
  stops = set(stop_tokens)
  pool = _Pool(sampler, jobs, batch, limit, max_new_tokens, on_done)
  with sampler.call_scope():
    carry = sampler._run(rows.empty, cfg=sampler.cfg, batch=batch,   # pylint: disable=protected-access
                         cache_len=min(limit, MIN_CACHE), num_out=num_out)
    for r in range(batch):
      pool.start_job(r)
    lengths = np.zeros((batch,), np.int64)
    while True:
      if pool.todo:
        carry = _refill(sampler, pool, carry, limit, max_new_tokens, lengths)
      busy = [r for r, row in enumerate(pool.rows) if row.busy]
      if not busy:
        break
      quota = max(1, math.ceil(refill_fraction * len(busy)))
      longest = int(max(lengths[r] for r in busy))
      carry = sampler._run(   # pylint: disable=protected-access
          rows.run, sampler.graphdef, sampler.params, carry, *args,
          jnp.int32(len(busy) - quota), mode=mode,
          attend_len=buckets.attend_bucket(longest + 1, _slots(carry)))
      active, count, lens, toks, lps = fetch(
          (carry.active_b, carry.count_b, carry.len_b, carry.tokens_bn, carry.logprobs_bn))
      lengths[:] = lens
      for r in busy:
        if not active[r]:
          c = int(count[r])
          pool.hand_back(r, toks[r, :c].tolist(), lps[r, :c].tolist(),
                         c > 0 and int(toks[r, c - 1]) in stops)
  return pool.tokens


def _refill(sampler: Sampler, pool: _Pool, carry: rows.RowCarry, limit: int,
            max_new_tokens: int, lengths: np.ndarray) -> rows.RowCarry:
  """Writes every queued request into its row: one ``rows.refill`` call per chunk-length
  bucket (a short continuation is not padded to a long fresh prompt's length)."""
  todo, pool.todo = pool.todo, []
  groups: dict[int, list] = {}
  for r, q in todo:
    first, w = pool.plan(r, q)
    budget = limits.check_budgets([len(pool.rows[r].history)], max_new_tokens, limit,
                                  sampler.overflow)[0]
    pool.rows[r].busy, pool.rows[r].budget = True, budget
    lengths[r] = first + len(w) - 1
    groups.setdefault(buckets.pow2_at_least(len(w) - 1, 16), []).append(
        (r, first, w, q.seed, budget))
  need = max(first + len(w) - 1 + b for g in groups.values() for _, first, w, _, b in g)
  if need > _slots(carry):   # double the rows' cache until the longest request fits
    carry = sampler._run(rows.grow, carry, cache_len=min(   # pylint: disable=protected-access
        limit, buckets.pow2_at_least(need, _slots(carry))))
  for t, group in sorted(groups.items()):
    carry = _refill_group(sampler, carry, group, t)
  return carry


def _slots(carry: rows.RowCarry) -> int:
  return carry.cache[0]["k"].shape[cache_lib.SLOT_AXIS]


def _refill_group(sampler: Sampler, carry: rows.RowCarry, group: list,
                  t: int) -> rows.RowCarry:
  """One ``rows.refill`` call for ``(row, first slot, tokens, seed, budget)`` entries
  whose written part (all tokens but the pending last one) fits in ``t`` columns."""
  batch = carry.len_b.shape[0]
  # Row counts an octave apart from batch/16 up (a bound on compiled shapes): a group pads
  # to at most twice its rows.
  k = next(n for n in (max(1, batch >> i) for i in (4, 3, 2, 1, 0)) if n >= len(group))
  rows_k = np.full((k,), batch, np.int32)
  start, n, pending, seed, budget = (np.zeros((k,), d) for d in
                                     (np.int32, np.int32, np.int32, np.uint32, np.int32))
  tokens = np.zeros((k, t), np.int32)
  for i, (r, first, w, sd, b) in enumerate(group):
    rows_k[i], start[i], n[i], pending[i], seed[i], budget[i] = r, first, len(w) - 1, w[-1], \
        sd, b
    tokens[i, :len(w) - 1] = w[:-1]
  attend = buckets.attend_bucket(int(max(start + n)) + 1, _slots(carry))
  return sampler._run(rows.refill, sampler.graphdef, sampler.params, carry,   # pylint: disable=protected-access
                      *map(jnp.asarray, (rows_k, start, tokens, n, pending, seed, budget)),
                      attend_len=attend)
