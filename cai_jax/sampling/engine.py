"""The jitted sampler core on ``(graphdef, params)``: prefill, extend, decode.

Three programs, each compiled once per shape bucket:

* ``prefill``: a left-padded prompt batch [b, P] -> a fresh decode state with a
  cache of ``cache_len`` slots (optionally forked ``num_samples`` times) and the
  logits at the last position only.
* ``extend``: appends a left-padded chunk [b, T] (plus each row's pending token)
  to an existing state: the continuation path, no re-prefill of the conversation.
* ``decode``: the whole sampling loop in one ``lax.while_loop`` that exits as
  soon as every row has stopped; the state (KV cache) is donated and updated in
  place. The sampler runs it in segments (``decode_begin``, then ``decode_run`` per
  attention length bucket): a step attends only to the live part of the cache.

``grow`` copies a state into a longer cache; ``pack`` drops the padding slots of a
state (used near ``max_seq_len``, where the cache may not grow).

Run them under ``jax.set_mesh(mesh)`` with sharded params to shard the cache
(batch over data axes, kv heads over tensor); without a mesh they run on one
device.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cai_jax.models.layers import prepare_decode
from cai_jax.sampling import cache as cache_lib
from cai_jax.sampling.cache import DecodeState
from cai_jax.sampling.select import Mode, select
from cai_jax.sharding.rules import constrain


def _last_logits(model, hidden_btd: jax.Array) -> jax.Array:
  """Logits at the last position only: [b, t, d] -> [b, v] float32."""
  return constrain(model.logits(hidden_btd[:, -1:])[:, 0], ("batch", "vocab"))


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "num_samples"))
def prefill(graphdef: nnx.GraphDef, params, tokens_bt: jax.Array, lengths_b: jax.Array, *,
            cache_len: int, num_samples: int = 1) -> tuple[DecodeState, jax.Array]:
  """Runs the prompts once and builds the decode state.

  Args:
    graphdef, params: the split model.
    tokens_bt: [b, P] int32 prompts, left-padded (right-aligned).
    lengths_b: [b] int32 prompt lengths; 0 marks a batch-padding row.
    cache_len: S >= P, slots in the cache (prompt + everything generated later).
    num_samples: n; the state and logits are forked to b * n rows (row-major:
      prompt i -> rows i*n .. i*n+n-1) after the single prefill.

  Returns:
    (state with b*n rows, last-position logits [b*n, v] float32).
  """
  model = nnx.merge(graphdef, params)
  cfg = model.cfg
  b, p = tokens_bt.shape
  real, positions = cache_lib.chunk_layout(lengths_b, p, jnp.zeros((b,), jnp.int32))
  causal = jnp.tril(jnp.ones((p, p), bool))[None]
  mask = causal & real[:, None, :]
  cache0 = cache_lib.empty_cache(cfg, b, p, cfg.jnp_dtype)
  hidden, kv = model.hidden(tokens_bt, positions_bt=positions, mask_bts=mask, cache=cache0,
                            cache_index=0, key_positions_bs=positions)
  logits = _last_logits(model, hidden)
  state = DecodeState(
      cache=cache_lib.pad_cache(kv, cache_len),
      valid_bs=jnp.pad(real, ((0, 0), (0, cache_len - p))),
      pos_b=lengths_b.astype(jnp.int32),
      kpos_bs=jnp.pad(positions.astype(jnp.int32), ((0, 0), (0, cache_len - p))),
      slot=jnp.asarray(p, jnp.int32),
      pending_b=jnp.zeros((b,), jnp.int32), pending_ok_b=jnp.zeros((b,), bool),
      live_b=lengths_b > 0)
  state = cache_lib.fork(cache_lib.constrain_state(state), num_samples)
  if num_samples > 1:
    logits = jnp.repeat(logits, num_samples, axis=0)
  return state, logits


def _chunk_forward(model, state: DecodeState, tokens_bt: jax.Array, n_new_b: jax.Array,
                   attend_len: int | None = None):
  """The forward of a left-padded chunk written at ``state.slot`` -> (hidden [b, t, d],
  the cache with the chunk's keys, real_bt, the slots' positions kpos_bs). Attention
  reads the first ``attend_len`` slots (they must hold the chunk's end)."""
  real, positions = cache_lib.chunk_layout(n_new_b, tokens_bt.shape[1], state.pos_b)
  mask = cache_lib.chunk_mask(state.valid_bs, real, state.slot)
  kpos = jax.lax.dynamic_update_slice(state.kpos_bs, positions.astype(jnp.int32),
                                      (0, state.slot))
  hidden, kv = model.hidden(tokens_bt, positions_bt=positions, mask_bts=mask,
                            cache=state.cache, cache_index=state.slot, key_positions_bs=kpos,
                            attend_len=attend_len)
  return hidden, kv, real, kpos


@functools.partial(jax.jit, static_argnames=("graphdef", "attend_len"), donate_argnums=(2,))
def extend(graphdef: nnx.GraphDef, params, state: DecodeState, extra_bt: jax.Array,
           lengths_b: jax.Array, *, attend_len: int | None = None
           ) -> tuple[DecodeState, jax.Array]:
  """Appends text to every row of a state (continuation without re-prefill).

  Each row's pending token (the last sampled one, if it belongs to the sequence)
  is fed first, then its new tokens.

  Args:
    graphdef, params: the split model.
    state: donated; its cache must have ``T`` free slots after ``slot``.
    extra_bt: [b, T] int32 new tokens, left-padded, with at least one free
      padding column per row for the pending token (T > max length).
    lengths_b: [b] int32 number of new tokens per row.
    attend_len: static; attention reads only the first slots, up to the chunk's end
      (``buckets.attend_bucket(slot + T, cache_len)``); None: the whole cache.

  Returns:
    (updated state, last-position logits [b, v] float32).
  """
  model = nnx.merge(graphdef, params)
  b, t = extra_bt.shape
  j = jnp.arange(t, dtype=jnp.int32)[None]
  pend = state.pending_ok_b
  start = (t - lengths_b - pend.astype(jnp.int32))[:, None]
  tokens = jnp.where((j == start) & pend[:, None], state.pending_b[:, None], extra_bt)
  n_new = lengths_b + pend.astype(jnp.int32)
  hidden, kv, real, kpos = _chunk_forward(model, state, tokens, n_new, attend_len)
  valid = jax.lax.dynamic_update_slice(state.valid_bs, real, (0, state.slot))
  state = state._replace(cache=kv, valid_bs=valid, kpos_bs=kpos, pos_b=state.pos_b + n_new,
                         slot=state.slot + t, pending_ok_b=jnp.zeros_like(pend))
  return cache_lib.constrain_state(state), _last_logits(model, hidden)


@functools.partial(jax.jit, static_argnames=("graphdef", "attend_len"))
def extend_logprobs(graphdef: nnx.GraphDef, params, state: DecodeState, extra_bt: jax.Array,
                    lengths_b: jax.Array, *, attend_len: int | None = None) -> jax.Array:
  """Appends a left-padded chunk (as ``extend``, no pending token) and scores it
  (``attend_len`` as ``extend``).

  Returns:
    [b, T] float32: column j holds log p(token j + 1 | everything up to token j) for
    the chunk's real tokens (0 elsewhere, and at the last column).
  """
  model = nnx.merge(graphdef, params)
  hidden, _, real, _ = _chunk_forward(model, state, extra_bt, lengths_b, attend_len)
  logp = jax.nn.log_softmax(model.logits(hidden[:, :-1]), axis=-1)       # [b, t-1, v]
  picked = jnp.take_along_axis(logp, extra_bt[:, 1:, None], axis=-1)[..., 0]
  picked = jnp.where(real[:, :-1] & real[:, 1:], picked, 0.0)
  return jnp.pad(picked, ((0, 0), (0, 1)))


@functools.partial(jax.jit, static_argnames=("cache_len",))
def grow(state: DecodeState, *, cache_len: int) -> DecodeState:
  """Copies a state into a longer cache (``cache_len`` >= its length) with free slots."""
  extra = cache_len - state.valid_bs.shape[1]
  return cache_lib.constrain_state(state._replace(
      cache=cache_lib.pad_cache(state.cache, cache_len),
      valid_bs=jnp.pad(state.valid_bs, ((0, 0), (0, extra))),
      kpos_bs=jnp.pad(state.kpos_bs, ((0, 0), (0, extra)))))


@functools.partial(jax.jit, static_argnames=("cache_len",), donate_argnums=(0,))
def pack(state: DecodeState, *, cache_len: int) -> DecodeState:
  """Drops padding slots: row r's n_r valid slots move, in order, to [top - n_r, top).

  ``top`` (the new ``slot``) is the largest n_r. Keys are stored rotated and masks use
  ``valid_bs`` / ``kpos_bs``, so moving slots changes nothing but the free room; with
  every row ending at ``slot``, a decode may also run round the cache (see ``_feed``).

  Args:
    state: donated decode state.
    cache_len: slots of the result (at least the largest valid count of a row).
  """
  s = state.valid_bs.shape[1]
  order = jnp.argsort(jnp.logical_not(state.valid_bs).astype(jnp.int32), axis=1,
                      stable=True)                        # each row's valid slots first
  n_b = jnp.sum(state.valid_bs, axis=1, dtype=jnp.int32)
  top = jnp.max(n_b)
  k = jnp.arange(cache_len, dtype=jnp.int32)[None] - (top - n_b)[:, None]   # [b, S']
  keep = (k >= 0) & (k < n_b[:, None])
  idx = jnp.take_along_axis(order, jnp.clip(k, 0, s - 1), axis=1)

  take_slots = lambda x: jnp.take_along_axis(x, idx[:, None, :, None], axis=2)  # [b, m, S', k]
  return cache_lib.constrain_state(state._replace(
      cache=[{n: take_slots(x) for n, x in layer.items()} for layer in state.cache],
      valid_bs=keep, kpos_bs=jnp.take_along_axis(state.kpos_bs, idx, axis=1), slot=top))


class DecodeOutput(NamedTuple):
  """Result of ``decode``.

  Attributes:
    tokens_bn: [b, N] int32 sampled tokens (0 after a row stopped).
    logprobs_bn: [b, N] float32 base-model log-probs of them (0 after stop).
    counts_b: [b] int32 tokens generated per row (stop token included).
    steps: int32 scalar, loop iterations run (= max over rows of counts).
    logits_bnv: [b, N, v] float32 per-step logits when ``collect_logits``, else None.
  """

  tokens_bn: jax.Array
  logprobs_bn: jax.Array
  counts_b: jax.Array
  steps: jax.Array
  logits_bnv: jax.Array | None


class DecodeCarry(NamedTuple):
  """The sampling loop's state between segments (``decode_begin`` / ``decode_run``).

  Attributes:
    state: the decode state; its pending tokens are the last sampled ones.
    tokens_bn, logprobs_bn, counts_b: as ``DecodeOutput``.
    step: int32 scalar, tokens sampled so far by the longest row (the PRNG step).
    done_b: [b] bool, rows that have stopped (or never sample).
    logits_bnv: per-step logits when collected, else None.
  """

  state: DecodeState
  tokens_bn: jax.Array
  logprobs_bn: jax.Array
  counts_b: jax.Array
  step: jax.Array
  done_b: jax.Array
  logits_bnv: jax.Array | None

  def output(self) -> DecodeOutput:
    return DecodeOutput(self.tokens_bn, self.logprobs_bn, self.counts_b, self.step,
                        self.logits_bnv)


def _feed(model, state: DecodeState, attend_len: int | None = None
          ) -> tuple[DecodeState, jax.Array]:
  """One decode step: writes every row's pending token at ``slot`` -> logits [b, v].

  Writes go round the cache (slot modulo its length). The sampler lets a decode do so
  only on a packed state (every row ending at ``slot``) whose rows each fit in the
  cache with their budget: then a wrapped write lands on a slot of a row that is done
  (or on padding), never on the history of a row still decoding. ``attend_len``: the
  step reads only the first slots (the caller keeps ``slot`` below it).
  """
  at = state.slot % state.valid_bs.shape[1]
  valid = jax.lax.dynamic_update_slice(state.valid_bs, state.pending_ok_b[:, None], (0, at))
  kpos = jax.lax.dynamic_update_slice(state.kpos_bs, state.pos_b[:, None], (0, at))
  hidden, kv = model.hidden(state.pending_b[:, None], positions_bt=state.pos_b[:, None],
                            mask_bts=valid[:, None, :], cache=state.cache,
                            cache_index=at, key_positions_bs=kpos, attend_len=attend_len)
  state = state._replace(cache=kv, valid_bs=valid, kpos_bs=kpos,
                         pos_b=state.pos_b + state.pending_ok_b.astype(jnp.int32),
                         slot=state.slot + 1, pending_ok_b=jnp.zeros_like(state.pending_ok_b))
  return cache_lib.constrain_state(state), _last_logits(model, hidden)


def _is_stop(tok: jax.Array, stops: jax.Array) -> jax.Array:
  return jnp.any(tok[:, None] == stops[None, :], axis=-1)


def _sample(carry: DecodeCarry, logits: jax.Array, key, temperature, top_p, stops, max_new,
            mode: Mode) -> DecodeCarry:
  """Samples the next token of every active row from ``logits`` and records it."""
  step = carry.step
  if key.ndim:   # [b] row keys: a row's step i uses fold_in(its key, i)
    step_key = jax.vmap(jax.random.fold_in)(key, carry.counts_b)
  else:
    step_key = jax.random.fold_in(key, step)
  tok, lp = select(logits, step_key, temperature, top_p, mode)
  active = ~carry.done_b
  all_logits = carry.logits_bnv
  if all_logits is not None:
    all_logits = all_logits.at[:, step].set(logits)
  done = carry.done_b | (active & _is_stop(tok, stops)) | (step + 1 >= max_new)
  return DecodeCarry(
      state=carry.state._replace(pending_b=tok, pending_ok_b=active),
      tokens_bn=carry.tokens_bn.at[:, step].set(jnp.where(active, tok, 0)),
      logprobs_bn=carry.logprobs_bn.at[:, step].set(jnp.where(active, lp, 0.0)),
      counts_b=carry.counts_b + active.astype(jnp.int32), step=step + 1, done_b=done,
      logits_bnv=all_logits)


def _begin(state: DecodeState, logits_bv, key, temperature, top_p, stops, max_new, *,
           num_out: int, mode: Mode, collect_logits: bool) -> DecodeCarry:
  b, v = logits_bv.shape
  carry = DecodeCarry(
      state=state, tokens_bn=jnp.zeros((b, num_out), jnp.int32),
      logprobs_bn=jnp.zeros((b, num_out), jnp.float32), counts_b=jnp.zeros((b,), jnp.int32),
      step=jnp.asarray(0, jnp.int32), done_b=~state.live_b | (max_new < 1),
      logits_bnv=jnp.zeros((b, num_out, v), jnp.float32) if collect_logits else None)
  return _sample(carry, logits_bv, key, temperature, top_p, stops, max_new, mode)


def _run(model, carry: DecodeCarry, key, temperature, top_p, stops, max_new, *, mode: Mode,
         attend_len: int | None) -> DecodeCarry:
  """Feeds and samples until every row is done or the next write would leave the first
  ``attend_len`` slots (None, or the whole cache: until done)."""
  cache_len = carry.state.valid_bs.shape[1]
  bounded = attend_len is not None and attend_len < cache_len
  model = prepare_decode(model)

  def cond(c):
    go = jnp.logical_not(jnp.all(c.done_b))
    return go & (c.state.slot < attend_len) if bounded else go

  def body(c):
    st, logits = _feed(model, c.state, attend_len if bounded else None)
    return _sample(c._replace(state=st), logits, key, temperature, top_p, stops, max_new,
                   mode)

  return jax.lax.while_loop(cond, body, carry)


@functools.partial(jax.jit, static_argnames=("num_out", "mode", "collect_logits"),
                   donate_argnums=(0,))
def decode_begin(state: DecodeState, logits_bv: jax.Array, key: jax.Array,
                 temperature: jax.Array, top_p: jax.Array, stops: jax.Array,
                 max_new: jax.Array, *, num_out: int, mode: Mode,
                 collect_logits: bool = False) -> DecodeCarry:
  """Samples the first token of every row from ``logits_bv`` (arguments as ``decode``)."""
  return _begin(state, logits_bv, key, temperature, top_p, stops, max_new, num_out=num_out,
                mode=mode, collect_logits=collect_logits)


@functools.partial(jax.jit, static_argnames=("graphdef", "mode", "attend_len"),
                   donate_argnums=(2,))
def decode_run(graphdef: nnx.GraphDef, params, carry: DecodeCarry, key: jax.Array,
               temperature: jax.Array, top_p: jax.Array, stops: jax.Array,
               max_new: jax.Array, *, mode: Mode, attend_len: int | None) -> DecodeCarry:
  """One segment of the sampling loop whose steps attend to the first ``attend_len``
  slots only; it stops when every row is done or ``slot`` reaches ``attend_len``.

  The sampler runs segments with growing ``buckets.attend_bucket`` lengths, so a step's
  attention costs what the conversation's live length costs, not the cache length. The
  PRNG step travels in the carry: segments sample exactly what one loop would.
  """
  return _run(nnx.merge(graphdef, params), carry, key, temperature, top_p, stops, max_new,
              mode=mode, attend_len=attend_len)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_out", "mode", "collect_logits"),
                   donate_argnums=(2,))
def decode(graphdef: nnx.GraphDef, params, state: DecodeState, logits_bv: jax.Array,
           key: jax.Array, temperature: jax.Array, top_p: jax.Array, stops: jax.Array,
           max_new: jax.Array, *, num_out: int, mode: Mode,
           collect_logits: bool = False) -> tuple[DecodeState, DecodeOutput]:
  """Samples up to ``max_new`` tokens per row inside one ``lax.while_loop`` whose steps
  attend to the whole cache (the single-program form of ``decode_begin`` +
  ``decode_run``; the sampler runs the segmented form).

  Args:
    graphdef, params: the split model.
    state: donated decode state with no pending tokens (fresh from prefill/extend).
    logits_bv: [b, v] float32 logits for the first new token.
    key: PRNG key, step i uses ``fold_in(key, i)``; or [b] keys, one per row, whose
      i-th token uses ``fold_in(key[r], i)`` (draws independent of the batch).
    temperature, top_p: float32 scalars (traced: no recompile when they change).
    stops: [n_stop] int32 stop ids, -1 padded.
    max_new: int32 scalar or [b] per-row budgets, max_new <= num_out; a row with a
      budget below 1 samples nothing.
    num_out: static output buffer length (the generation-length bucket).
    mode: static sampling choices.
    collect_logits: also return every step's logits (tests only).

  Returns:
    (state whose pending tokens are each row's last sampled token, DecodeOutput).
  """
  carry = _begin(state, logits_bv, key, temperature, top_p, stops, max_new, num_out=num_out,
                 mode=mode, collect_logits=collect_logits)
  carry = _run(nnx.merge(graphdef, params), carry, key, temperature, top_p, stops, max_new,
               mode=mode, attend_len=None)
  return carry.state, carry.output()
