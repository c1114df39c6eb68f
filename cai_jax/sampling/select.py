"""Choosing the next token from last-position logits: greedy, temperature, top-k, top-p.

``Mode`` holds the static choices (they change the program); temperature and
top-p are traced scalars (changing them never recompiles). The returned
log-probability is always the base model's (log-softmax of the raw logits),
before temperature and filtering.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Mode:
  """Static sampling choices.

  Attributes:
    greedy: argmax decoding (temperature == 0).
    top_k: keep the k most likely tokens (0 = off). Static: ``lax.top_k`` needs it.
    top_p: whether nucleus filtering is on (its threshold is a traced scalar).
  """

  greedy: bool = True
  top_k: int = 0
  top_p: bool = False


def make_mode(temperature: float, top_k: int, top_p: float) -> Mode:
  """Validates user sampling arguments and returns the static part."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0, got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if temperature == 0:
    return Mode(greedy=True)
  return Mode(greedy=False, top_k=int(top_k), top_p=top_p < 1.0)


def make_keys(seed: int, row_seeds=None, rows: int = 0, batch: int = 0) -> jax.Array:
  """The PRNG key of a sampling call: ``key(seed)``, or with ``row_seeds`` one key per row
  (``rows`` real ones, padded with zeros to ``batch``)."""
  if row_seeds is None:
    return jax.random.key(seed)
  if len(row_seeds) != rows:
    raise ValueError(f"got {len(row_seeds)} row_seeds for {rows} rows")
  seeds = np.pad(np.asarray(row_seeds, np.uint32), (0, batch - rows))
  return jax.vmap(jax.random.key)(jnp.asarray(seeds))


def filtered_logits(logits_bv: jax.Array, temperature: jax.Array, top_p: jax.Array,
                    mode: Mode) -> jax.Array:
  """Temperature-scaled logits with top-k / top-p exclusions set to -inf.

  Args:
    logits_bv: [b, v] float32 raw logits.
    temperature: float32 scalar > 0.
    top_p: float32 scalar in (0, 1]; used when ``mode.top_p``.
    mode: static choices.

  Returns:
    [b, v] float32 logits to sample from (softmax of them is the sampling law).
  """
  x = logits_bv.astype(jnp.float32) / temperature
  v = x.shape[-1]
  k = min(mode.top_k, v) if mode.top_k else 0
  if not k and not mode.top_p:
    return x
  if mode.top_p:
    sorted_bv = -jnp.sort(-x, axis=-1)                              # descending
    if k:
      sorted_bv = jnp.where(jnp.arange(v)[None] < k, sorted_bv, _NEG_INF)
    probs = jax.nn.softmax(sorted_bv, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs                     # mass strictly above
    keep = (before < top_p) & (sorted_bv > _NEG_INF)               # always keeps the top-1
    threshold = jnp.min(jnp.where(keep, sorted_bv, jnp.inf), axis=-1, keepdims=True)
  else:
    threshold = jax.lax.top_k(x, k)[0][:, -1:]                      # k-th largest
  return jnp.where(x >= threshold, x, _NEG_INF)


def first_argmax(x_bv: jax.Array) -> jax.Array:
  """``jnp.argmax(x, axis=-1)`` as [b] int32 (the first maximum; the first NaN if any), as a
  max and a min over the vocabulary: XLA:CPU ran argmax's paired (value, index) reduction
  at 1.8 ms per step over SmolLM2's 16 x 49,152 logits (BENCHMARKS.md, 2026-12-06)."""
  v = x_bv.shape[-1]
  nan = jnp.isnan(x_bv)
  top = jnp.max(x_bv, axis=-1, keepdims=True)
  hit = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan, x_bv == top)
  return jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.int32)[None], v), axis=-1)


def select(logits_bv: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array,
           mode: Mode) -> tuple[jax.Array, jax.Array]:
  """Picks one token per row.

  Args:
    logits_bv: [b, v] float32 raw logits at the last position.
    key: PRNG key for this step, or [b] keys, one per row (ignored when greedy).
    temperature, top_p: traced float32 scalars.
    mode: static choices.

  Returns:
    (tokens [b] int32, base-model log-probs of those tokens [b] float32).
  """
  logits_bv = logits_bv.astype(jnp.float32)
  logp_bv = jax.nn.log_softmax(logits_bv, axis=-1)
  if mode.greedy:
    tok = first_argmax(logits_bv)
  else:
    x = filtered_logits(logits_bv, temperature, top_p, mode)
    if key.ndim:   # one key per row: a row's draw does not depend on the batch around it
      tok = jax.vmap(lambda k, row: jax.random.categorical(k, row))(key, x).astype(jnp.int32)
    else:
      tok = jax.random.categorical(key, x, axis=-1).astype(jnp.int32)
  return tok, jnp.take_along_axis(logp_bv, tok[:, None], axis=-1)[:, 0]
