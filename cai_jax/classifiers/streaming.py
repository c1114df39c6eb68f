"""Streaming classifier scores read from the classifier's own KV cache.

A constitutional classifier (Sharma et al. 2025, arXiv 2501.18837) is a scalar-head model
(``models.ScalarHeadModel``) whose value at a position, through a sigmoid, is the
probability that the text up to and including that token is harmful. Scoring a response
as it streams costs one cached step per token, not a forward of the whole prefix:

* ``stream_prefill``: a left-padded prefix batch [b, P] (the prompt, for an *exchange*
  classifier that scores the output in the context of its input) -> a cache state and
  the score after every prefix token;
* ``stream_extend``: appends a left-padded chunk [b, T] (one token or k tokens per row,
  ragged) to the state -> the score after every chunk token;
* ``empty_state``: a state with no prefix (an *output-only* classifier).

The state is the sampler's ``DecodeState`` (``sampling.cache``): ragged rows are holes
(invalid slots) in one shared cache, so the score at every token equals the full
forward's value of the row's tokens up to it. Pending-token fields are unused (always
empty). ``StreamingClassifier`` is the host-side handle (padding, buckets, growth).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cai_jax.models.config import ModelConfig
from cai_jax.sampling import buckets, engine
from cai_jax.sampling import cache as cache_lib
from cai_jax.sampling.cache import DecodeState


def head_probs(model, hidden_btd: jax.Array) -> jax.Array:
  """A scalar-head model's sigmoid score from its final hidden states: [b, t, d] -> [b, t]
  float32 (the same arithmetic as ``ScalarHeadModel.__call__``, then a sigmoid)."""
  w = model.head_w_d[...].astype(jnp.float32)
  values = jnp.einsum("btd,d->bt", hidden_btd.astype(jnp.float32), w) + model.head_b[...]
  return jax.nn.sigmoid(values)


def empty_state(cfg: ModelConfig, batch: int, cache_len: int) -> DecodeState:
  """A state with no token in it (output-only classification starts here)."""
  zeros_b = lambda dtype: jnp.zeros((batch,), dtype)   # distinct buffers (donated later)
  return DecodeState(
      cache=cache_lib.empty_cache(cfg, batch, cache_len, cfg.jnp_dtype),
      valid_bs=jnp.zeros((batch, cache_len), bool), pos_b=zeros_b(jnp.int32),
      kpos_bs=jnp.zeros((batch, cache_len), jnp.int32), slot=jnp.asarray(0, jnp.int32),
      pending_b=zeros_b(jnp.int32), pending_ok_b=zeros_b(bool),
      live_b=jnp.ones((batch,), bool))


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def stream_prefill(graphdef: nnx.GraphDef, params: Any, tokens_bt: jax.Array,
                   lengths_b: jax.Array, *, cache_len: int
                   ) -> tuple[DecodeState, jax.Array]:
  """Runs the prefixes once into a cache of ``cache_len`` slots.

  Args:
    graphdef, params: a scalar-head classifier.
    tokens_bt: [b, P] int32 prefixes, left-padded (right-aligned).
    lengths_b: [b] int32 prefix lengths (0: an empty prefix).
    cache_len: S >= P slots (the prefix plus everything streamed later).

  Returns:
    (state, probs [b, P] float32: the score after each prefix token; 0 on padding; a
    row's last prefix token is at column P - 1).
  """
  model = nnx.merge(graphdef, params)
  cfg = model.cfg
  b, p = tokens_bt.shape
  real, positions = cache_lib.chunk_layout(lengths_b, p, jnp.zeros((b,), jnp.int32))
  mask = jnp.tril(jnp.ones((p, p), bool))[None] & real[:, None, :]
  hidden, kv = model.backbone.hidden(
      tokens_bt, positions_bt=positions, mask_bts=mask,
      cache=cache_lib.empty_cache(cfg, b, p, cfg.jnp_dtype), cache_index=0,
      key_positions_bs=positions)
  state = DecodeState(
      cache=cache_lib.pad_cache(kv, cache_len),
      valid_bs=jnp.pad(real, ((0, 0), (0, cache_len - p))),
      pos_b=lengths_b.astype(jnp.int32),
      kpos_bs=jnp.pad(positions.astype(jnp.int32), ((0, 0), (0, cache_len - p))),
      slot=jnp.asarray(p, jnp.int32), pending_b=jnp.zeros((b,), jnp.int32),
      pending_ok_b=jnp.zeros((b,), bool), live_b=jnp.ones((b,), bool))
  return cache_lib.constrain_state(state), jnp.where(real, head_probs(model, hidden), 0.0)


def extend_probs(model, state: DecodeState, chunk_bt: jax.Array, lengths_b: jax.Array,
                 attend_len: int | None = None) -> tuple[DecodeState, jax.Array]:
  """``stream_extend``'s body on a merged model (for use inside other jitted loops)."""
  real, positions = cache_lib.chunk_layout(lengths_b, chunk_bt.shape[1], state.pos_b)
  mask = cache_lib.chunk_mask(state.valid_bs, real, state.slot)
  kpos = jax.lax.dynamic_update_slice(state.kpos_bs, positions.astype(jnp.int32),
                                      (0, state.slot))
  hidden, kv = model.backbone.hidden(
      chunk_bt, positions_bt=positions, mask_bts=mask, cache=state.cache,
      cache_index=state.slot, key_positions_bs=kpos, attend_len=attend_len)
  valid = jax.lax.dynamic_update_slice(state.valid_bs, real, (0, state.slot))
  state = state._replace(cache=kv, valid_bs=valid, kpos_bs=kpos,
                         pos_b=state.pos_b + lengths_b.astype(jnp.int32),
                         slot=state.slot + chunk_bt.shape[1])
  return cache_lib.constrain_state(state), jnp.where(real, head_probs(model, hidden), 0.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "attend_len"), donate_argnums=(2,))
def stream_extend(graphdef: nnx.GraphDef, params: Any, state: DecodeState,
                  chunk_bt: jax.Array, lengths_b: jax.Array, *,
                  attend_len: int | None = None) -> tuple[DecodeState, jax.Array]:
  """Appends a chunk to every row (no re-prefill) and scores each new token.

  Args:
    graphdef, params: the classifier.
    state: donated; its cache must have ``T`` free slots after ``slot``.
    chunk_bt: [b, T] int32 new tokens, left-padded.
    lengths_b: [b] int32 new tokens per row (0: the row gets nothing this time).
    attend_len: static; attention reads only the first slots (they must hold the
      chunk's end, ``buckets.attend_bucket(slot + T, cache_len)``); None: all.

  Returns:
    (state, probs [b, T] float32: the score after each chunk token; 0 on padding).
  """
  return extend_probs(nnx.merge(graphdef, params), state, chunk_bt, lengths_b, attend_len)


@dataclasses.dataclass
class ClassifierStream:
  """A live classifier state and its host bookkeeping.

  Attributes:
    state: the device state (donated when fed).
    rows: real rows; batch: the padded batch; cache_len, slot: as ``Conversation``.
  """

  state: DecodeState
  rows: int
  batch: int
  cache_len: int
  slot: int


class StreamingClassifier:
  """A scalar-head classifier scoring prefixes and streamed continuations.

  Args:
    graphdef, params: the classifier (``models.init(cfg, "scalar")`` or a saved one).
  """

  def __init__(self, graphdef: nnx.GraphDef, params: Any):
    self.graphdef, self.params = graphdef, params
    self.cfg = nnx.merge(graphdef, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)).cfg

  @classmethod
  def load(cls, model, *, mesh=None) -> "StreamingClassifier":
    """From a ``models.store.SavedModel`` of kind "scalar"."""
    model.require_kind("scalar", "a classifier")
    return cls(*model.load(mesh=mesh))

  def start(self, prefixes: Sequence[Sequence[int]] | None, *, rows: int | None = None,
            room: int = 0, batch: int | None = None
            ) -> tuple[ClassifierStream, list[np.ndarray]]:
    """Prefills ``prefixes`` (None: ``rows`` empty prefixes, output-only mode), leaving
    ``room`` free slots -> (stream, per row the score after each prefix token)."""
    rows = len(prefixes) if prefixes is not None else rows
    batch = batch or buckets.batch_bucket(rows)
    if prefixes is None or max(len(p) for p in prefixes) == 0:
      cache_len = buckets.cache_bucket(max(room, 1))
      state = empty_state(self.cfg, batch, cache_len)
      return ClassifierStream(state, rows, batch, cache_len, 0), [np.zeros(0)] * rows
    p_len = buckets.length_bucket(max(len(p) for p in prefixes))
    cache_len = buckets.cache_bucket(p_len + max(room, 1))
    tokens, lengths = buckets.left_pad(prefixes, p_len, batch)
    state, probs = stream_prefill(self.graphdef, self.params, jnp.asarray(tokens),
                                  jnp.asarray(lengths), cache_len=cache_len)
    probs = np.asarray(probs)
    return (ClassifierStream(state, rows, batch, cache_len, p_len),
            [probs[i, p_len - len(p):] for i, p in enumerate(prefixes)])

  def prefix_scores(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
    """[n] the score after each prefix's last token (the input classifier's verdict)."""
    _, per_row = self.start(prefixes)
    return np.asarray([s[-1] if len(s) else 0.0 for s in per_row], np.float32)

  def feed(self, stream: ClassifierStream, chunks: Sequence[Sequence[int]]
           ) -> tuple[ClassifierStream, list[np.ndarray]]:
    """Appends ``chunks[i]`` (possibly empty) to row i -> (the new stream, per row the
    score after each of its new tokens). ``stream`` is consumed."""
    if len(chunks) != stream.rows:
      raise ValueError(f"got {len(chunks)} chunks for {stream.rows} rows")
    width = buckets.pow2_at_least(max(len(c) for c in chunks))
    state, cache_len = stream.state, stream.cache_len
    if stream.slot + width > cache_len:
      cache_len = buckets.cache_bucket(stream.slot + width)
      state = engine.grow(state, cache_len=cache_len)
    tokens, lengths = buckets.left_pad(chunks, width, stream.batch)
    state, probs = stream_extend(
        self.graphdef, self.params, state, jnp.asarray(tokens), jnp.asarray(lengths),
        attend_len=buckets.attend_bucket(stream.slot + width, cache_len))
    probs = np.asarray(probs)
    new = ClassifierStream(state, stream.rows, stream.batch, cache_len, stream.slot + width)
    return new, [probs[i, width - len(c):] for i, c in enumerate(chunks)]
