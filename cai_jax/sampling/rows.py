"""The device half of continuous batching: a cache whose rows have their own write pointer.

Row r of a ``RowCarry`` holds one sequence at slots ``0 .. len_b[r] - 1`` (the slot of a
token is its position), plus a pending token (its last one, not in the cache yet) that
the next decode step feeds. Rows are independent, so the host can give a row new work
at any time without touching the others:

* ``refill`` writes a chunk of new tokens into some rows, either after what they hold
  (the next turn of a conversation) or from slot 0 (a new sequence), and makes each
  row's last new token pending, with a fresh token budget and seed;
* ``run`` feeds and samples every active row until enough of them have finished (a stop
  token or the budget), or the next write would leave the first ``attend_len`` slots.

There is no shared slot, no padding in a row and no hole, so nothing has to be packed:
a decode step writes each row at ``len_b[r]`` and attends to its slots below. Token
``i`` of a turn is drawn with ``fold_in(key(seed[r]), i)``, the row keys of
``engine.decode``: the same sequence, seed and budget give the same tokens as the
sampler's static batch, whatever else is in the batch.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cai_jax.models.config import ModelConfig
from cai_jax.models.layers import prepare_decode
from cai_jax.sampling import cache as cache_lib
from cai_jax.sampling.select import Mode, select
from cai_jax.sharding.rules import constrain


class RowCarry(NamedTuple):
  """Everything continuous batching keeps on the device.

  Attributes:
    cache: per layer ``{"k", "v"}`` [b, m, S, k] (``sampling.cache``).
    len_b: [b] int32, tokens of the row in the cache (its next slot and position).
    pending_b: [b] int32, the row's last token (fed by the next step).
    active_b: [b] bool, the row is sampling a turn.
    seed_b: [b] uint32, the seed of the row's current turn.
    budget_b: [b] int32, tokens the row may sample in this turn.
    count_b: [b] int32, tokens sampled in this turn so far.
    tokens_bn, logprobs_bn: [b, N] the turn's tokens and their base-model log-probs.
  """

  cache: cache_lib.KVCache
  len_b: jax.Array
  pending_b: jax.Array
  active_b: jax.Array
  seed_b: jax.Array
  budget_b: jax.Array
  count_b: jax.Array
  tokens_bn: jax.Array
  logprobs_bn: jax.Array


def _slot_positions(slots_1s: jax.Array, b: int) -> jax.Array:
  """The position of every slot's token, [b, S]: in a row cache, the slot itself."""
  return jnp.broadcast_to(slots_1s, (b, slots_1s.shape[1]))


def _constrain(c: RowCarry) -> RowCarry:
  b = ("batch",)
  return c._replace(cache=cache_lib.constrain_cache(c.cache), len_b=constrain(c.len_b, b),
                    pending_b=constrain(c.pending_b, b), active_b=constrain(c.active_b, b),
                    seed_b=constrain(c.seed_b, b), budget_b=constrain(c.budget_b, b),
                    count_b=constrain(c.count_b, b),
                    tokens_bn=constrain(c.tokens_bn, ("batch", None)),
                    logprobs_bn=constrain(c.logprobs_bn, ("batch", None)))


@functools.partial(jax.jit, static_argnames=("cfg", "batch", "cache_len", "num_out"))
def empty(*, cfg: ModelConfig, batch: int, cache_len: int, num_out: int) -> RowCarry:
  """A carry of ``batch`` idle rows with ``cache_len`` slots and ``num_out`` token slots."""
  z = jnp.zeros((batch,), jnp.int32)
  return _constrain(RowCarry(
      cache=cache_lib.empty_cache(cfg, batch, cache_len, cfg.jnp_dtype), len_b=z, pending_b=z,
      active_b=jnp.zeros((batch,), bool), seed_b=jnp.zeros((batch,), jnp.uint32),
      budget_b=z, count_b=z, tokens_bn=jnp.zeros((batch, num_out), jnp.int32),
      logprobs_bn=jnp.zeros((batch, num_out), jnp.float32)))


@functools.partial(jax.jit, static_argnames=("cache_len",), donate_argnums=(0,))
def grow(carry: RowCarry, *, cache_len: int) -> RowCarry:
  """The carry with ``cache_len`` slots per row (more than it has; one copy)."""
  return _constrain(carry._replace(cache=cache_lib.pad_cache(carry.cache, cache_len)))


@functools.partial(jax.jit, static_argnames=("graphdef", "attend_len"), donate_argnums=(2,))
def refill(graphdef: nnx.GraphDef, params, carry: RowCarry, rows_k: jax.Array,
           start_k: jax.Array, tokens_kt: jax.Array, n_k: jax.Array, pending_k: jax.Array,
           seed_k: jax.Array, budget_k: jax.Array, *, attend_len: int) -> RowCarry:
  """Gives rows new work: writes ``tokens_kt[i, :n_k[i]]`` at slots ``start_k[i] ..`` of row
  ``rows_k[i]`` (0: a new sequence; the row's length: after what it holds), then makes
  ``pending_k[i]`` its pending token and starts a turn of ``budget_k[i]`` tokens.

  Args:
    graphdef, params: the split model.
    carry: donated.
    rows_k: [k] int32 rows to refill; ``b`` (out of range) marks a padding entry.
    start_k: [k] int32 first slot written (at most the row's length).
    tokens_kt: [k, T] int32 tokens, right-padded; n_k: [k] int32 real ones (may be 0).
    pending_k, seed_k, budget_k: [k] the turn's pending token, seed and token budget.
    attend_len: static; attention reads the first slots only (>= every start + n).
  """
  model = nnx.merge(graphdef, params)
  k, t = tokens_kt.shape
  # The rows' first ``attend_len`` slots only (what the chunk attends to): the refill
  # reads k x attend_len slots and writes k x T, never a whole row or the whole cache.
  take = lambda x: x.at[rows_k, :, :attend_len].get(mode="fill", fill_value=0)
  sub = [{n: take(x) for n, x in layer.items()} for layer in carry.cache]
  positions = start_k[:, None] + jnp.arange(t, dtype=jnp.int32)[None]          # [k, T]
  slots = jnp.arange(attend_len, dtype=jnp.int32)[None]
  mask = slots[:, None, :] <= positions[:, :, None]                            # [k, T, A]
  _, kv = model.hidden(tokens_kt, positions_bt=positions, mask_bts=mask, cache=sub,
                       cache_index=start_k, key_positions_bs=_slot_positions(slots, k))
  at = jnp.minimum(positions, attend_len - 1)
  written = lambda x: jnp.transpose(                                           # [k, T, m, h]
      jnp.take_along_axis(x, at[:, None, :, None], axis=2), (0, 2, 1, 3))
  # Chunk slots past a row's real tokens (padding) lie beyond its length: harmless.
  cache = [{n: x.at[rows_k[:, None], :, positions].set(written(kv[i][n]), mode="drop")
            for n, x in layer.items()} for i, layer in enumerate(carry.cache)]
  put = lambda x, y: x.at[rows_k].set(y, mode="drop")
  return _constrain(carry._replace(
      cache=cache, len_b=put(carry.len_b, start_k + n_k), pending_b=put(carry.pending_b,
                                                                          pending_k),
      active_b=put(carry.active_b, budget_k > 0), seed_b=put(carry.seed_b, seed_k),
      budget_b=put(carry.budget_b, budget_k), count_b=put(carry.count_b, jnp.zeros_like(n_k)),
      tokens_bn=put(carry.tokens_bn, jnp.zeros((k,) + carry.tokens_bn.shape[1:], jnp.int32)),
      logprobs_bn=put(carry.logprobs_bn, jnp.zeros((k,) + carry.logprobs_bn.shape[1:],
                                                   jnp.float32))))


def _step(model, c: RowCarry, temperature, top_p, stops, mode: Mode,
          attend_len: int) -> RowCarry:
  """Feeds every row's pending token at its own slot and samples the active rows."""
  b = c.len_b.shape[0]
  slots = jnp.arange(c.cache[0]["k"].shape[cache_lib.SLOT_AXIS], dtype=jnp.int32)[None]
  pos = c.len_b[:, None]
  hidden, kv = model.hidden(c.pending_b[:, None], positions_bt=pos,
                            mask_bts=(slots <= pos)[:, None, :], cache=c.cache,
                            cache_index=c.len_b, key_positions_bs=_slot_positions(slots, b),
                            attend_len=attend_len)
  logits = constrain(model.logits(hidden)[:, 0], ("batch", "vocab"))
  keys = jax.vmap(lambda seed, i: jax.random.fold_in(jax.random.key(seed), i))(
      c.seed_b, c.count_b)
  tok, lp = select(logits, keys, temperature, top_p, mode)
  act = c.active_b
  rows = jnp.arange(b)
  at = jnp.where(act, c.count_b, c.tokens_bn.shape[1])            # inactive: dropped
  count = c.count_b + act.astype(jnp.int32)
  stop = jnp.any(tok[:, None] == stops[None, :], axis=-1)
  return _constrain(c._replace(
      cache=kv, len_b=c.len_b + act.astype(jnp.int32),
      pending_b=jnp.where(act, tok, c.pending_b),
      active_b=act & ~stop & (count < c.budget_b), count_b=count,
      tokens_bn=c.tokens_bn.at[rows, at].set(tok, mode="drop"),
      logprobs_bn=c.logprobs_bn.at[rows, at].set(lp, mode="drop")))


@functools.partial(jax.jit, static_argnames=("graphdef", "mode", "attend_len"),
                   donate_argnums=(2,))
def run(graphdef: nnx.GraphDef, params, carry: RowCarry, temperature: jax.Array,
        top_p: jax.Array, stops: jax.Array, min_active: jax.Array, *, mode: Mode,
        attend_len: int) -> RowCarry:
  """Decodes until at most ``min_active`` rows are active, or an active row's next write
  would reach slot ``attend_len`` (every step attends to the first ``attend_len`` slots).

  Args:
    graphdef, params: the split model.
    carry: donated.
    temperature, top_p: float32 scalars; stops: [n_stop] int32 stop ids, -1 padded.
    min_active: int32 scalar; the loop returns once no more rows than this are active.
    mode: static sampling choices.
    attend_len: static, at most the cache length.
  """
  model = prepare_decode(nnx.merge(graphdef, params))

  def cond(c):
    n = jnp.sum(c.active_b, dtype=jnp.int32)
    longest = jnp.max(jnp.where(c.active_b, c.len_b, 0))
    return (n > min_active) & (n > 0) & (longest < attend_len)

  # The loop runs on a copy of the first ``attend_len`` slots, put back once at the end:
  # a step over the whole cache would copy those slots out of it again in every layer
  # (XLA:CPU does not fuse the slice into the attention), once per step instead of once
  # per call. A step writes below ``attend_len`` only (``cond``), so nothing is lost.
  full = carry.cache
  cut = attend_len < full[0]["k"].shape[cache_lib.SLOT_AXIS]
  if cut:
    carry = carry._replace(cache=[{n: x[:, :, :attend_len] for n, x in layer.items()}
                                  for layer in full])
  out = jax.lax.while_loop(
      cond, lambda c: _step(model, c, temperature, top_p, stops, mode, attend_len), carry)
  if cut:
    out = _constrain(out._replace(cache=[
        {n: jax.lax.dynamic_update_slice(x, out.cache[i][n], (0, 0, 0, 0))
         for n, x in layer.items()} for i, layer in enumerate(full)]))
  return out
