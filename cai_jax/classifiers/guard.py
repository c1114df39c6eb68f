"""A sampler guarded by constitutional classifiers: refuse at the input, or stop mid-stream.

``GuardedSampler.generate``:

1. the input classifier scores each prompt (its score after the last prompt token); a
   prompt at or above ``input_threshold`` gets a zero token budget (nothing is
   generated) and the refusal;
2. the other rows decode in segments of ``check_every`` (k) steps: one jitted program
   (``guard_chunk``) runs the sampler's own step (``engine._feed`` + ``engine._sample``)
   until the k-th next token, then feeds the segment's new tokens to the output
   classifier's KV cache (``streaming.extend_probs``: one cached chunk, no re-prefill)
   and reads its score after every token. A row whose score reaches ``threshold`` at
   any token is marked done, so it stops generating, and gets the refusal; the index
   of the first crossing token is exact even when k > 1 (the row may have sampled up to
   k - 1 tokens past it before the check, which are discarded).
   ``mode="exchange"``: the classifier's cache starts from the prompt (it scores the
   output in the context of its input); ``mode="output"``: from nothing.

The PRNG step and the per-row sampling draws are those of ``Sampler.decode``, so a row
that is never blocked gets exactly the unguarded sampler's answer for the same seed.
Decode steps attend to the whole cache (not ``attend_bucket`` segments) and the guard
runs on one device (no mesh).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cai_jax.classifiers import streaming
from cai_jax.classifiers.streaming import StreamingClassifier
from cai_jax.sampling import buckets, engine, limits
from cai_jax.sampling.engine import DecodeCarry
from cai_jax.sampling.sampler import Sampler
from cai_jax.sampling.select import Mode, make_keys, make_mode
from cai_jax.sharding.processes import fetch

INPUT, OUTPUT = "input", "output"


class GuardStats(NamedTuple):
  """The guard's device state between chunks.

  Attributes:
    scored: int32 scalar, decode steps whose tokens the classifier has seen.
    blocked_b: [b] bool, rows stopped by the output classifier.
    index_b: [b] int32, the first token index whose score reached the threshold (-1).
    max_b: [b] float32, the highest score so far (over the generated tokens).
  """

  scored: jax.Array
  blocked_b: jax.Array
  index_b: jax.Array
  max_b: jax.Array


def _run_until(model, carry: DecodeCarry, until: jax.Array, args, mode: Mode
               ) -> DecodeCarry:
  """The sampler's loop (``engine._run`` over the whole cache) until every row is done
  or ``until`` tokens have been sampled."""
  def cond(c):
    return jnp.logical_not(jnp.all(c.done_b)) & (c.step < until)

  # pylint: disable=protected-access
  def body(c):
    st, logits = engine._feed(model, c.state)
    return engine._sample(c._replace(state=st), logits, *args, mode)

  return jax.lax.while_loop(cond, body, carry)


def _window(tokens_bn: jax.Array, counts_b: jax.Array, start: jax.Array, k: int
            ) -> tuple[jax.Array, jax.Array]:
  """Tokens ``start .. start + k - 1`` of every row, right-aligned (left-padded) as a
  classifier chunk -> (chunk [b, k], lengths [b])."""
  b = tokens_bn.shape[0]
  win = jax.lax.dynamic_slice(tokens_bn, (0, start), (b, k))
  n_b = jnp.clip(counts_b - start, 0, k)
  j = jnp.arange(k, dtype=jnp.int32)[None]
  src = j - (k - n_b)[:, None]
  chunk = jnp.take_along_axis(win, jnp.clip(src, 0, k - 1), axis=1)
  return jnp.where(src >= 0, chunk, 0), n_b


@functools.partial(jax.jit, static_argnames=("graphdef", "cgraphdef", "k", "mode"),
                   donate_argnums=(4, 5))
def guard_chunk(graphdef: nnx.GraphDef, params: Any, cgraphdef: nnx.GraphDef, cparams: Any,
                carry: DecodeCarry, cstate, stats: GuardStats, key: jax.Array,
                temperature: jax.Array, top_p: jax.Array, stops: jax.Array,
                max_new: jax.Array, threshold: jax.Array, *, k: int, mode: Mode):
  """Decodes up to k more steps, scores their tokens, stops the rows that cross.

  Args:
    graphdef, params: the policy; cgraphdef, cparams: the output classifier.
    carry: donated decode carry (``engine.decode_begin``); ``num_out`` a multiple of k.
    cstate: donated classifier state holding every scored token (k free slots).
    stats: the guard's state; key .. max_new: the sampling arguments of ``engine.decode``.
    threshold: float32 scalar; a token whose score is >= it blocks its row.

  Returns:
    (carry, cstate, stats) after the chunk.
  """
  model = nnx.merge(graphdef, params)
  carry = _run_until(model, carry, stats.scored + k,
                     (key, temperature, top_p, stops, max_new), mode)
  chunk, n_b = _window(carry.tokens_bn, carry.counts_b, stats.scored, k)
  cstate, probs = streaming.extend_probs(nnx.merge(cgraphdef, cparams), cstate, chunk, n_b)
  index = stats.scored + jnp.arange(k, dtype=jnp.int32)[None] - (k - n_b)[:, None]
  cross = (probs >= threshold) & (index >= stats.scored)
  first = jnp.min(jnp.where(cross, index, jnp.iinfo(jnp.int32).max), axis=1)
  new_block = jnp.any(cross, axis=1) & ~stats.blocked_b
  stats = GuardStats(
      scored=stats.scored + k, blocked_b=stats.blocked_b | new_block,
      index_b=jnp.where(new_block, first, stats.index_b),
      max_b=jnp.maximum(stats.max_b, jnp.max(probs, axis=1)))
  return carry._replace(done_b=carry.done_b | stats.blocked_b), cstate, stats


@dataclasses.dataclass
class GuardOutput:
  """Result of ``GuardedSampler.generate``.

  Attributes:
    tokens: per row the answer: the generated tokens, or the refusal when blocked.
    reports: per row ``{"blocked_at": "input" | "output" | None, "token_index": the
      first generated token whose output score reached the threshold (None unless
      blocked at the output), "max_score": the highest output score over the scored
      tokens (the input score for a row blocked at the input)}``.
    input_scores: per row the input classifier's score (0 without one).
    generated: per row the tokens generated before the guard stopped it (unreplaced).
  """

  tokens: list[list[int]]
  reports: list[dict]
  input_scores: list[float]
  generated: list[list[int]]


class GuardedSampler:
  """A ``Sampler`` with an input classifier and a streaming output classifier.

  Args:
    sampler: the policy's sampler (no mesh).
    output_classifier: a ``StreamingClassifier`` scored every ``check_every`` tokens;
      None: no output check.
    input_classifier: a ``StreamingClassifier`` scored on each prompt; None: no check.
    threshold: output score at or above which a row is blocked.
    input_threshold: the same for the input score (default ``threshold``).
    check_every: k, generated tokens between two output checks (every token is scored).
    mode: "exchange" (the output classifier reads the prompt first) or "output".
    refusal_tokens: the answer of a blocked row (e.g. the tokenized refusal text).
  """

  def __init__(self, sampler: Sampler, output_classifier: StreamingClassifier | None = None,
               input_classifier: StreamingClassifier | None = None, *,
               threshold: float = 0.5, input_threshold: float | None = None,
               check_every: int = 1, mode: str = "exchange",
               refusal_tokens: Sequence[int] = ()):
    if mode not in ("exchange", "output"):
      raise ValueError(f"mode must be 'exchange' or 'output', got {mode!r}")
    if check_every < 1:
      raise ValueError(f"check_every must be >= 1, got {check_every}")
    if sampler.mesh is not None:
      raise ValueError("the guard runs without a mesh")
    self.sampler, self.output_classifier = sampler, output_classifier
    self.input_classifier = input_classifier
    self.threshold = float(threshold)
    self.input_threshold = float(threshold if input_threshold is None else input_threshold)
    self.k, self.mode, self.refusal = int(check_every), mode, list(refusal_tokens)

  def _input_scores(self, prompts) -> np.ndarray:
    if self.input_classifier is None:
      return np.zeros((len(prompts),), np.float32)
    return self.input_classifier.prefix_scores(prompts)

  def _classifier_state(self, conv, num_out: int):
    """The output classifier's state: the prompts prefilled (exchange) or empty."""
    clf = self.output_classifier
    room = num_out + self.k
    if self.mode == "output":
      return streaming.empty_state(clf.cfg, conv.batch, buckets.cache_bucket(room))
    p_len = buckets.length_bucket(max(len(h) for h in conv.history))
    tokens, lengths = buckets.left_pad(conv.history, p_len, conv.batch)
    state, _ = streaming.stream_prefill(clf.graphdef, clf.params, jnp.asarray(tokens),
                                        jnp.asarray(lengths), cache_len=p_len + room)
    return state

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               stop_tokens: Sequence[int] = (), row_seeds: Sequence[int] | None = None
               ) -> GuardOutput:
    """Guarded ``Sampler.generate`` (one sample per prompt); arguments as there."""
    s = self.sampler
    in_scores = self._input_scores(prompts)
    in_block = in_scores >= self.input_threshold
    with s.call_scope():
      conv, logits = s.start(prompts, min_free=max_new_tokens)
      budget = limits.check_budgets(conv.lengths, max_new_tokens, s.max_len, s.overflow)
      budget = [0 if blk else b for b, blk in zip(budget, in_block)]
      if conv.slot + max(max(budget), 1) - 1 > conv.cache_len:
        raise ValueError("no cache room for the budget (rows near max_seq_len)")
      num_out = self.k * math.ceil(
          buckets.length_bucket(min(max_new_tokens, s.max_len)) / self.k)
      args = (make_keys(seed, row_seeds, conv.rows, conv.batch),
              jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p),
              jnp.asarray(buckets.stop_array(stop_tokens)),
              jnp.asarray(np.pad(np.asarray(budget, np.int32), (0, conv.batch - conv.rows))))
      mode = make_mode(temperature, top_k, top_p)
      conv.consumed = True
      carry = engine.decode_begin(conv.state, logits, *args, num_out=num_out, mode=mode)
      carry, stats = self._stream(carry, conv, num_out, args, mode)
      toks, counts, blocked, index, max_b = fetch((carry.tokens_bn, carry.counts_b,
                                                   stats.blocked_b, stats.index_b, stats.max_b))
    return self._output(toks, counts, blocked, index, max_b, in_scores, in_block)

  def _stream(self, carry: DecodeCarry, conv, num_out: int, args, mode: Mode):
    """Runs ``guard_chunk`` until every row is done and all its tokens were scored."""
    b = conv.batch
    stats = GuardStats(jnp.asarray(0, jnp.int32), jnp.zeros((b,), bool),
                       jnp.full((b,), -1, jnp.int32), jnp.zeros((b,), jnp.float32))
    if self.output_classifier is None:
      carry = engine.decode_run(self.sampler.graphdef, self.sampler.params, carry, *args,
                                mode=mode, attend_len=None)
      return carry, stats
    clf = self.output_classifier
    cstate = self._classifier_state(conv, num_out)
    while True:
      carry, cstate, stats = guard_chunk(
          self.sampler.graphdef, self.sampler.params, clf.graphdef, clf.params, carry,
          cstate, stats, *args, jnp.float32(self.threshold), k=self.k, mode=mode)
      done, scored, step = fetch((jnp.all(carry.done_b), stats.scored, carry.step))
      if done and scored >= step:
        return carry, stats

  def _output(self, toks, counts, blocked, index, max_b, in_scores, in_block) -> GuardOutput:
    out = GuardOutput([], [], [float(x) for x in in_scores], [])
    for i in range(len(in_scores)):
      gen = toks[i, :counts[i]].tolist()
      if in_block[i]:
        rep = {"blocked_at": INPUT, "token_index": None, "max_score": float(in_scores[i])}
      elif blocked[i]:
        gen = gen[:int(index[i]) + 1]
        rep = {"blocked_at": OUTPUT, "token_index": int(index[i]),
               "max_score": float(max_b[i])}
      else:
        rep = {"blocked_at": None, "token_index": None, "max_score": float(max_b[i])}
      out.tokens.append(list(self.refusal) if rep["blocked_at"] else gen)
      out.reports.append(rep)
      out.generated.append(gen)
    return out


def threshold_for_false_refusal_rate(benign_scores: Sequence[float],
                                     target_rate: float) -> float:
  """The smallest threshold whose false-refusal rate on benign traffic is <= target.

  A row is refused when its score is >= the threshold, so the rate at threshold t is
  ``mean(scores >= t)``. With m = floor(target * n) refusals allowed, the smallest such
  t lies just above the (m + 1)-th largest score: that score's float32 successor (the
  guard compares float32 scores). When every row may be refused (m >= n) it is the
  smallest score.
  """
  scores = np.sort(np.asarray(benign_scores, np.float32))[::-1]
  if scores.size == 0:
    raise ValueError("need at least one benign score")
  if not 0.0 <= target_rate <= 1.0:
    raise ValueError(f"target_rate must be in [0, 1], got {target_rate}")
  m = int(math.floor(target_rate * scores.size + 1e-9))
  if m >= scores.size:
    return float(scores[-1])
  return float(np.nextafter(scores[m], np.float32(np.inf)))
