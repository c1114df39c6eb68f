"""Forward-only scoring: the judge's option log-probs and continuation log-probs.

* ``candidate_logprobs``: for each sequence, the log-probabilities of a small set
  of candidate tokens (e.g. the ids of "A" and "B") as the next token after a
  given position. Only the hidden state at that position goes through the LM head:
  [b, v] logits, never [b, t, v].
* ``option_logprobs``: log p(option | prompt) summed over each option's tokens, for k
  short options per prompt (a judge's "(A)" / "(B)" on a BPE vocabulary): the prompt is
  prefilled once and its cache forked k ways, so the options cost only their own tokens.
* ``sequence_logprobs``: sum (and per-token values) of log p(continuation |
  prompt) for DPO / PPO reference scores. The LM head runs only over the
  continuation span, in chunks of positions, so the full [b, t, v] logits tensor
  is never materialised.

Inputs are left-padded to length buckets (and batch buckets) like the sampler's, and
kept within the model's ``max_seq_len`` by the sampler's length policy (``limits``):
"truncate" drops the first tokens of over-long prompts (scored options and
continuations are never cut: one that cannot fit raises), "error" raises.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cai_jax.sampling import buckets, engine
from cai_jax.sampling import cache as cache_lib
from cai_jax.sampling.sampler import Sampler

_CHUNK = 128  # positions per LM-head chunk in sequence_logprobs


def _hidden(model, tokens_bt, lengths_b):
  """Final hidden states of left-padded rows (padding masked) -> [b, t, d]."""
  b, t = tokens_bt.shape
  real, positions = cache_lib.chunk_layout(lengths_b, t, jnp.zeros((b,), jnp.int32))
  mask = jnp.tril(jnp.ones((t, t), bool))[None] & real[:, None, :]
  hidden, _ = model.hidden(tokens_bt, positions_bt=positions, mask_bts=mask)
  return hidden


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _candidates(graphdef, params, tokens_bt, lengths_b, index_b, cand_bc):
  model = nnx.merge(graphdef, params)
  hidden = _hidden(model, tokens_bt, lengths_b)
  h_b1d = jnp.take_along_axis(hidden, index_b[:, None, None], axis=1)
  logp_bv = jax.nn.log_softmax(model.logits(h_b1d)[:, 0], axis=-1)
  return jnp.take_along_axis(logp_bv, cand_bc, axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "span"))
def _continuation(graphdef, params, tokens_bt, lengths_b, cont_lengths_b, *, span):
  model = nnx.merge(graphdef, params)
  hidden = _hidden(model, tokens_bt, lengths_b)
  b, t, d = hidden.shape
  # Position j predicts token j + 1; shifted right by one, column j holds the
  # predictor of token j. Only the last `span` targets can be continuation tokens.
  h = jnp.pad(hidden, ((0, 0), (1, 0), (0, 0)))[:, t - span:t]        # [b, span, d]
  targets = tokens_bt[:, t - span:]                                   # [b, span]
  chunk = min(_CHUNK, span)
  n = -(-span // chunk)        # a span clamped to max_seq_len may not divide in chunks
  h = jnp.pad(h, ((0, 0), (0, n * chunk - span), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, n * chunk - span)))
  hc = h.reshape(b, n, chunk, d).swapaxes(0, 1)
  tc = targets.reshape(b, n, chunk).swapaxes(0, 1)

  def one(args):
    h_bcd, t_bc = args
    logp = jax.nn.log_softmax(model.logits(h_bcd), axis=-1)
    return jnp.take_along_axis(logp, t_bc[..., None], axis=-1)[..., 0]

  per_tok = jax.lax.map(one, (hc, tc)).swapaxes(0, 1).reshape(b, n * chunk)[:, :span]
  in_cont = jnp.arange(span)[None] >= (span - cont_lengths_b)[:, None]
  per_tok = jnp.where(in_cont, per_tok, 0.0)
  return per_tok.sum(axis=1), per_tok


def _sampler(model_or_sampler, mesh) -> Sampler:
  if isinstance(model_or_sampler, Sampler):
    return model_or_sampler
  return Sampler.from_model(model_or_sampler, mesh=mesh)


def candidate_logprobs(model, sequences: Sequence[Sequence[int]], candidates, *,
                       positions: Sequence[int] | None = None, mesh=None) -> np.ndarray:
  """Log-probs of candidate next tokens at one position per sequence.

  Args:
    model: an NNX Transformer or a ``Sampler``.
    sequences: ragged token-id lists.
    candidates: [c] ids shared by all rows, or [B, c] per row.
    positions: per row, the index (into the row's tokens) of the token after
      which the candidates are scored; default: the last token. Truncation (over-long
      sequences keep their last ``max_seq_len`` tokens) must keep that token.
    mesh: optional mesh (ignored when a Sampler is given).

  Returns:
    [B, c] float32 log-probabilities (normalised over the full vocabulary).
  """
  s = _sampler(model, mesh)
  n = len(sequences)
  cand = np.broadcast_to(np.asarray(candidates, np.int32), (n, np.shape(candidates)[-1]))
  pos = np.array([len(x) - 1 for x in sequences] if positions is None else positions, np.int32)
  if np.any(pos < 0) or np.any(pos >= [len(x) for x in sequences]):
    raise ValueError("positions must index into each sequence")
  fit = s.fit(sequences, what="sequence")
  pos = pos - np.asarray(fit.dropped, np.int32)
  if np.any(pos < 0):
    raise ValueError(f"a scored position lies in the tokens dropped to fit max_seq_len="
                     f"{s.max_len}: rows {np.flatnonzero(pos < 0)[:5].tolist()}")
  t = buckets.length_bucket(max(len(x) for x in fit.kept), s.max_len)
  rows = buckets.batch_bucket(n, s._batch_multiple())  # pylint: disable=protected-access
  tokens, lengths = buckets.left_pad(fit.kept, t, rows)
  index = np.full((rows,), t - 1, np.int32)
  index[:n] = t - lengths[:n] + pos
  cand_pad = np.zeros((rows, cand.shape[1]), np.int32)
  cand_pad[:n] = cand
  out = s._run(_candidates, s.graphdef, s.params, s._put(tokens, ("batch", "length")),
               s._put(lengths, ("batch",)), s._put(index, ("batch",)),
               s._put(cand_pad, ("batch", None)))
  return np.asarray(jax.device_get(out))[:n]


def option_logprobs(model, prompts: Sequence[Sequence[int]],
                    options: Sequence[Sequence[Sequence[int]]], *, mesh=None) -> np.ndarray:
  """log p(option | prompt), summed over the option's tokens, for k options per prompt.

  Args:
    model: an NNX Transformer or a ``Sampler``.
    prompts: n ragged non-empty token-id lists.
    options: per prompt, k non-empty token-id lists (the same k for every prompt).
    mesh: optional mesh (ignored when a Sampler is given).

  Returns:
    [n, k] float32.
  """
  s = _sampler(model, mesh)
  k = len(options[0]) if options else 0
  if len(options) != len(prompts) or any(len(o) != k for o in options) or k == 0:
    raise ValueError("options must give the same number (>= 1) of options for each prompt")
  if any(len(o) == 0 for row in options for o in row):
    raise ValueError("every option must have at least one token")
  flat = [list(o) for row in options for o in row]
  longest = max(len(o) for o in flat)
  if longest >= s.max_len:
    raise ValueError(f"an option of {longest} tokens leaves no room for its prompt within "
                     f"max_seq_len={s.max_len}")
  with s.call_scope():
    return _options(s, prompts, flat, longest, k)


def _options(s: Sampler, prompts, flat: list[list[int]], longest: int, k: int) -> np.ndarray:
  """``option_logprobs`` on a sampler: one prefill (forked k ways), one scored chunk."""
  conv, logits = s.start(prompts, num_samples=k, min_free=longest)
  first = np.zeros((conv.batch,), np.int32)
  first[:len(flat)] = [o[0] for o in flat]
  lp_first = np.asarray(jax.device_get(jnp.take_along_axis(
      jax.nn.log_softmax(logits, axis=-1), s._put(first, ("batch",))[:, None], axis=1)))[:, 0]
  t = buckets.length_bucket(longest, s.max_len - conv.slot)   # start left longest free
  conv = s._ensure_room(conv, t)  # pylint: disable=protected-access
  tokens, lengths = buckets.left_pad(flat, t, conv.batch)
  conv.consumed = True
  rest = s._run(engine.extend_logprobs, s.graphdef, s.params, conv.state,
                s._put(tokens, ("batch", "length")), s._put(lengths, ("batch",)))
  total = lp_first[:len(flat)] + np.asarray(jax.device_get(rest)).sum(axis=1)[:len(flat)]
  return total.reshape(len(prompts), k).astype(np.float32)


@dataclasses.dataclass
class SequenceScores:
  """Continuation log-probs: ``total`` [B] sums and ``per_token`` ragged lists."""

  total: np.ndarray
  per_token: list[list[float]]


def sequence_logprobs(model, prompts: Sequence[Sequence[int]],
                      continuations: Sequence[Sequence[int]], *, mesh=None) -> SequenceScores:
  """log p(continuation | prompt), summed and per token, for each pair.

  Args:
    model: an NNX Transformer or a ``Sampler``.
    prompts: ragged non-empty token-id lists.
    continuations: ragged non-empty token-id lists, one per prompt.
    mesh: optional mesh (ignored when a Sampler is given).

  Returns:
    ``SequenceScores`` (float32).
  """
  if len(prompts) != len(continuations):
    raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
  if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in continuations):
    raise ValueError("prompts and continuations must be non-empty")
  s = _sampler(model, mesh)
  n = len(prompts)
  if max(len(c) for c in continuations) >= s.max_len:
    raise ValueError(f"a continuation of {max(len(c) for c in continuations)} tokens leaves "
                     f"no room for its prompt within max_seq_len={s.max_len}")
  fit = s.fit(prompts, reserve=[len(c) for c in continuations])
  seqs = [p + list(c) for p, c in zip(fit.kept, continuations)]
  t = buckets.length_bucket(max(len(x) for x in seqs), s.max_len)
  span = min(buckets.length_bucket(max(len(c) for c in continuations)), t)
  rows = buckets.batch_bucket(n, s._batch_multiple())  # pylint: disable=protected-access
  tokens, lengths = buckets.left_pad(seqs, t, rows)
  cont_len = np.zeros((rows,), np.int32)
  cont_len[:n] = [len(c) for c in continuations]
  total, per_tok = s._run(_continuation, s.graphdef, s.params,
                          s._put(tokens, ("batch", "length")), s._put(lengths, ("batch",)),
                          s._put(cont_len, ("batch",)), span=span)
  total, per_tok = jax.device_get((total, per_tok))
  per_token = [per_tok[i, span - cont_len[i]:].tolist() for i in range(n)]
  return SequenceScores(total=np.asarray(total[:n]), per_token=per_token)
