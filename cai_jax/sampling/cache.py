"""The decode state: a preallocated KV cache with per-row validity and positions.

Layout: one ``{"k", "v"}`` pair per layer, each [b, m, S, k] (batch, kv head, slot,
head dim: head-major, so a head's slots are contiguous and attention reads them in
place), sharded batch over the data axes and kv heads over ``tensor``. All rows
write the same slot at each step (a scalar ``slot``, so the model's
``dynamic_update_slice`` cache write is used as is); what a slot means for a row is
recorded separately:

* ``valid_bs`` says which slots hold a real token of the row (prompt padding,
  continuation padding and post-stop filler are invalid and masked out);
* ``pos_b`` is the row's next RoPE position, independent of the slot;
* ``kpos_bs`` is the position of the token in each slot, so sliding-window layers mask
  keys by their distance in positions, not in slots.

So ragged prompts, rows that stop at different steps and ragged continuations
all share one cache without moving data: a hole in a row is just a masked slot,
and attention over the valid slots with their true positions equals the full
forward of the row's real tokens.

The last sampled token of a row is "pending": it is part of the sequence but its
keys are not in the cache yet (``pending_b``, ``pending_ok_b``). The next
continuation feeds it in front of the new text, so no decode step is spent on it.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cai_jax.models.config import ModelConfig
from cai_jax.sharding.rules import constrain

CACHE_AXES = ("batch", "kv_heads", "length", "kv")
SLOT_AXIS = 2   # the slot axis of a cache array
KVCache = list[dict[str, jax.Array]]


class DecodeState(NamedTuple):
  """Everything the decoder carries between calls (a pytree of device arrays).

  Attributes:
    cache: per layer ``{"k", "v"}`` [b, m, S, k].
    valid_bs: [b, S] bool, True where the slot holds a real token of the row.
    pos_b: [b] int32, the row's next position (number of tokens in the cache).
    kpos_bs: [b, S] int32, the position of the token in each slot (meaningful where valid).
    slot: int32 scalar, the next free slot (shared by all rows).
    pending_b: [b] int32, last sampled token, not yet in the cache.
    pending_ok_b: [b] bool, whether ``pending_b`` is part of the sequence.
    live_b: [b] bool, real rows (False for batch padding).
  """

  cache: KVCache
  valid_bs: jax.Array
  pos_b: jax.Array
  kpos_bs: jax.Array
  slot: jax.Array
  pending_b: jax.Array
  pending_ok_b: jax.Array
  live_b: jax.Array


def constrain_cache(cache: KVCache) -> KVCache:
  """Batch over the data axes, kv heads over tensor (no-op without a mesh)."""
  return [{name: constrain(x, CACHE_AXES) for name, x in layer.items()} for layer in cache]


def constrain_state(state: DecodeState) -> DecodeState:
  """Applies the batch / kv-head sharding to every array of the state."""
  return state._replace(
      cache=constrain_cache(state.cache),
      valid_bs=constrain(state.valid_bs, ("batch", "length")),
      kpos_bs=constrain(state.kpos_bs, ("batch", "length")),
      pos_b=constrain(state.pos_b, ("batch",)),
      pending_b=constrain(state.pending_b, ("batch",)),
      pending_ok_b=constrain(state.pending_ok_b, ("batch",)),
      live_b=constrain(state.live_b, ("batch",)))


def empty_cache(cfg: ModelConfig, batch: int, length: int, dtype) -> KVCache:
  """Zeros of shape [batch, m, length, k] per layer, sharded."""
  shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
  return constrain_cache([{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                          for _ in range(cfg.n_layers)])


def pad_cache(cache: KVCache, length: int) -> KVCache:
  """Extends every [b, m, s, k] array with zero slots to [b, m, length, k]."""
  def _pad(x):
    return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[SLOT_AXIS]), (0, 0)))
  return constrain_cache([{n: _pad(x) for n, x in layer.items()} for layer in cache])


def fork(state: DecodeState, n: int) -> DecodeState:
  """Repeats every row ``n`` times (row i -> rows i*n .. i*n+n-1): n samples per prefill."""
  if n == 1:
    return state
  rep = lambda x: jnp.repeat(x, n, axis=0)
  return constrain_state(state._replace(
      cache=jax.tree.map(rep, state.cache), valid_bs=rep(state.valid_bs),
      pos_b=rep(state.pos_b), kpos_bs=rep(state.kpos_bs), pending_b=rep(state.pending_b),
      pending_ok_b=rep(state.pending_ok_b), live_b=rep(state.live_b)))


def chunk_layout(lengths_b: jax.Array, t: int, pos_b: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Real-token mask and positions of a left-padded [b, t] chunk.

  Args:
    lengths_b: [b] int32 number of real tokens (right-aligned) per row.
    t: chunk length.
    pos_b: [b] int32 position of each row's first chunk token.

  Returns:
    (real_bt [b, t] bool, positions_bt [b, t] int32; padding gets the first position).
  """
  j = jnp.arange(t, dtype=jnp.int32)[None]
  start = (t - lengths_b)[:, None]
  real = j >= start
  return real, pos_b[:, None] + jnp.maximum(j - start, 0)


def chunk_mask(valid_bs: jax.Array, real_bt: jax.Array, slot: jax.Array) -> jax.Array:
  """Attention mask [b, t, S] for a chunk written at slots [slot, slot + t).

  A chunk query attends to the row's valid cached slots and to the chunk's real
  tokens at or before it.
  """
  b, s = valid_bs.shape
  t = real_bt.shape[1]
  rel = jnp.arange(s, dtype=jnp.int32)[None, :] - slot                # [1, S]
  in_chunk = (rel >= 0) & (rel < t)
  key_real = jnp.take_along_axis(real_bt, jnp.clip(rel, 0, t - 1).repeat(b, 0), axis=1)
  causal = rel[:, None, :] <= jnp.arange(t)[:, None]                  # [1, t, S]
  new_keys = (in_chunk & key_real)[:, None, :] & causal
  old_keys = (valid_bs & ~in_chunk)[:, None, :]
  return old_keys | new_keys
