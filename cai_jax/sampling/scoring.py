"""Forward-only scoring: the judge's option log-probs and continuation log-probs.

* ``candidate_logprobs``: for each sequence, the log-probabilities of a small set
  of candidate tokens (e.g. the ids of "A" and "B") as the next token after a
  given position. Only the hidden state at that position goes through the LM head:
  [b, v] logits, never [b, t, v].
* ``option_logprobs``: log p(option | prompt) summed over each option's tokens, for k
  short options per prompt (a judge's "(A)" / "(B)" on a BPE vocabulary): the prompt is
  prefilled once and its cache forked k ways, so the options cost only their own tokens.
* ``continued_option_logprobs``: the same k options, each row scored after a sequence that
  shares a prefix with a live conversation's row (a judge's answer prompt after the
  reasoning it sampled): the row's cache is cut back to the shared prefix and only the
  rest is appended, so the sequence is not prefilled again.
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
from cai_jax.sampling.sampler import Conversation, Sampler
from cai_jax.sharding.processes import fetch

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
  t = buckets.prompt_bucket(max(len(x) for x in fit.kept), s.max_len)
  rows = buckets.batch_bucket(n, s._batch_multiple())  # pylint: disable=protected-access
  tokens, lengths = buckets.left_pad(fit.kept, t, rows)
  index = np.full((rows,), t - 1, np.int32)
  index[:n] = t - lengths[:n] + pos
  cand_pad = np.zeros((rows, cand.shape[1]), np.int32)
  cand_pad[:n] = cand
  out = s._run(_candidates, s.graphdef, s.params, s._put(tokens, ("batch", "length")),
               s._put(lengths, ("batch",)), s._put(index, ("batch",)),
               s._put(cand_pad, ("batch", None)))
  return np.asarray(fetch(out))[:n]


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
  lp_first = np.asarray(fetch(jnp.take_along_axis(
      jax.nn.log_softmax(logits, axis=-1), s._put(first, ("batch",))[:, None], axis=1)))[:, 0]
  t = buckets.length_bucket(longest, s.max_len - conv.slot)   # start left longest free
  conv = s._ensure_room(conv, t)  # pylint: disable=protected-access
  tokens, lengths = buckets.left_pad(flat, t, conv.batch)
  conv.consumed = True
  rest = s._run(engine.extend_logprobs, s.graphdef, s.params, conv.state,
                s._put(tokens, ("batch", "length")), s._put(lengths, ("batch",)),
                attend_len=buckets.attend_bucket(conv.slot + t, conv.cache_len))
  total = lp_first[:len(flat)] + np.asarray(fetch(rest)).sum(axis=1)[:len(flat)]
  return total.reshape(len(prompts), k).astype(np.float32)


@functools.partial(jax.jit, donate_argnums=(0,))
def _cut_back(state: cache_lib.DecodeState, keep_b: jax.Array) -> cache_lib.DecodeState:
  """Keeps each row's first ``keep_b`` tokens (positions ``< keep_b``) in its cache: later
  slots are masked out, the pending token dropped, the next position set to ``keep_b``.
  The slots stay where they are; the next chunk is written at ``slot`` as always."""
  valid = state.valid_bs & (state.kpos_bs < keep_b[:, None])
  return cache_lib.constrain_state(state._replace(
      valid_bs=valid, pos_b=keep_b.astype(jnp.int32),
      pending_ok_b=jnp.zeros_like(state.pending_ok_b)))


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
  """Length of the common prefix of two token lists."""
  n = min(len(a), len(b))
  return next((i for i in range(n) if a[i] != b[i]), n)


def _plan(batch: int, seqs: list[list[int]], keep: list[int], ok: list[bool]) -> list[bool]:
  """Which eligible rows continue their cache: the extend chunk is as wide as the bucket
  of the longest continuation (plus the pending column), for every row of the batch, so
  a row that needs a long one may cost more than prefilling it again. Picks the chunk
  width that minimises ``batch * width`` + the tokens of the rows left to a re-prefill
  (ties: more rows cached)."""
  need = [buckets.length_bucket(len(x) - k + 1) for x, k in zip(seqs, keep)]
  best_cost, best_w = sum(len(x) for x in seqs), 0          # width 0: nothing cached
  for w in sorted({n for n, o in zip(need, ok) if o}):
    cost = batch * w + sum(len(x) for x, n, o in zip(seqs, need, ok) if not (o and n <= w))
    if cost <= best_cost:
      best_cost, best_w = cost, w
  return [o and n <= best_w for n, o in zip(need, ok)]


def continued_option_logprobs(s: Sampler, conv: Conversation,
                              sequences: Sequence[Sequence[int]],
                              options: Sequence[Sequence[Sequence[int]]]
                              ) -> tuple[np.ndarray, np.ndarray]:
  """``option_logprobs`` of each conversation row's sequence, continuing its cache.

  Row i of ``conv`` (e.g. a prompt and the reasoning sampled after it, ``keep_state=
  True``) and ``sequences[i]`` (e.g. the prompt, the trimmed reasoning and an answer
  cue) share a prefix of tokens: the row's cache is cut back to it (at most all but the
  sequence's last token, which gives the options' logits), the rest of the sequence is
  appended (``Sampler.extend``) and the options are scored from there: a first token from
  the extend's logits, the others by ``engine.extend_logprobs`` on that state (once per
  option; the state is not consumed by it). The numbers equal a fresh prefill of the
  sequence up to float summation order.

  A row is left to the caller (``used[i]`` False: score it with ``option_logprobs``) when
  its prompt was truncated (``conv.dropped``), when the sequence and its longest option
  pass ``max_len`` (a fresh prefill truncates it), when the conversation's decode went
  round its cache, or when the part to append is so long that prefilling the row again
  is cheaper (``_plan``). The conversation is consumed (its cache freed) in any case.

  Args:
    s: the sampler that holds ``conv``.
    conv: a live conversation with one row per sequence.
    sequences: per row, the non-empty token ids the options follow.
    options: per row, k non-empty token-id lists (the same k for every row).

  Returns:
    (log-probs [n, k] float32, NaN where not used; ``used`` [n] bool).
  """
  s._check_live(conv)  # pylint: disable=protected-access
  n, k = len(sequences), len(options[0]) if options else 0
  if n != conv.rows or len(options) != n or any(len(o) != k for o in options) or k == 0:
    raise ValueError(f"need one sequence and the same number (>= 1) of options for each of "
                     f"the conversation's {conv.rows} rows")
  if any(len(x) == 0 for x in sequences) or any(len(o) == 0 for row in options for o in row):
    raise ValueError("sequences and options must be non-empty")
  out = np.full((n, k), np.nan, np.float32)
  seqs = [list(x) for x in sequences]
  longest = max(len(o) for row in options for o in row)
  with s.call_scope():
    n_valid = np.asarray(fetch(jnp.sum(conv.state.valid_bs, axis=1)))[:n]
    pend = np.asarray(fetch(conv.state.pending_ok_b))[:n]
    keep = [min(_shared(h, x), len(x) - 1, len(h) - int(p))
            for h, x, p in zip(conv.history, seqs, pend)]
    ok = [conv.slot <= conv.cache_len and d == 0 and len(h) - int(p) == v and
          len(x) + longest <= s.max_len
          for h, x, p, v, d in zip(conv.history, seqs, pend, n_valid, conv.dropped)]
    used = _plan(conv.batch, seqs, keep, ok)
    if not any(used):
      conv.free()
      return out, np.asarray(used)
    # Rows left to the caller keep nothing and append one token (ignored).
    keep = [c if u else 0 for c, u in zip(keep, used)]
    extra = [x[c:] if u else x[-1:] for x, c, u in zip(seqs, keep, used)]
    keep_b = np.zeros((conv.batch,), np.int32)
    keep_b[:n] = keep
    conv.consumed = True
    conv = dataclasses.replace(
        conv, consumed=False, history=[h[:c] for h, c in zip(conv.history, keep)],
        state=s._run(_cut_back, conv.state, s._put(keep_b, ("batch",))))
    multi = any(len(o) > 1 for row, u in zip(options, used) if u for o in row)
    t_opt = buckets.length_bucket(longest) if multi else 0
    # Room for the appended text and the option chunk at once (one copy at most).
    conv = s._ensure_room(  # pylint: disable=protected-access
        conv, buckets.length_bucket(max(len(e) for e in extra) + 1) + t_opt)
    conv, logits = s.extend(conv, extra, max_new_tokens=1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    first = np.zeros((conv.batch, k), np.int32)
    first[:n] = [[o[0] for o in row] for row in options]
    lp = np.array(fetch(jnp.take_along_axis(
        logp, s._put(first, ("batch", None)), axis=1)))[:n]
    if multi:
      conv = s._ensure_room(conv, t_opt)  # pylint: disable=protected-access
      t = buckets.length_bucket(longest, conv.free_slots)
      if t > conv.free_slots:
        raise RuntimeError(f"no room for {longest} option tokens in the cache "
                           f"({conv.free_slots} free slots)")
      for j in range(k):
        tokens, lengths = buckets.left_pad([row[j] for row in options], t, conv.batch)
        rest = s._run(engine.extend_logprobs, s.graphdef, s.params, conv.state,
                      s._put(tokens, ("batch", "length")), s._put(lengths, ("batch",)),
                      attend_len=buckets.attend_bucket(conv.slot + t, conv.cache_len))
        lp[:, j] += np.asarray(fetch(rest)).sum(axis=1)[:n]
    conv.free()
  used = np.asarray(used)
  out[used] = lp[used]
  return out, used


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
  total, per_tok = fetch((total, per_tok))
  per_token = [per_tok[i, span - cont_len[i]:].tolist() for i in range(n)]
  return SequenceScores(total=np.asarray(total[:n]), per_token=per_token)
