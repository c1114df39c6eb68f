"""Host-side sampler API: ragged token lists in, tokens and log-probs out.

``Sampler`` wraps a split model ``(graphdef, params)`` and an optional mesh; it pads inputs
to shape buckets, calls the jitted programs of ``engine`` and trims the results.
``generate`` / ``continue_generation``: shortcuts on an NNX model (the README's API).

Prefix reuse:
* ``num_samples=n`` prefills each prompt once and forks the cache n ways.
* ``keep_state=True`` returns a ``Conversation`` (the live KV cache); passing it to
  ``continue_generation`` with extra text per row appends that text (a chunked prefill of
  the new tokens only) and samples again, consuming it (its cache is donated).

Length limit: rows (and the cache) stay within ``cfg.max_seq_len`` under the overflow
policy (``limits``): "truncate" keeps the last tokens and stops rows there, "error" raises.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cai_jax.models import api as model_api
from cai_jax.sampling import buckets, engine, limits
from cai_jax.sampling.cache import DecodeState
from cai_jax.sampling.select import make_keys, make_mode
from cai_jax.sharding.processes import fetch
from cai_jax.sharding.rules import logical_to_spec


@dataclasses.dataclass
class Conversation:
  """A live decode state plus the host bookkeeping to continue it.

  Attributes:
    state: device arrays (KV cache etc.); donated when continued.
    rows: number of real rows (prompts * num_samples), in output order.
    batch: padded batch size (the batch bucket).
    cache_len: slots in the cache.
    slot: host mirror of the next free slot.
    consumed: set once the state has been donated to a later call.
    history: per row, the token ids of its sequence (pending token included).
    dropped: per row, tokens the last prefill dropped from the front of its sequence.
  """

  state: DecodeState
  rows: int
  batch: int
  cache_len: int
  slot: int
  consumed: bool = False
  history: list[list[int]] = dataclasses.field(default_factory=list)
  dropped: list[int] = dataclasses.field(default_factory=list)

  @property
  def free_slots(self) -> int:
    return self.cache_len - self.slot

  @property
  def lengths(self) -> list[int]:
    return [len(h) for h in self.history]

  def free(self) -> None:
    """Consumes the conversation and frees its cache now (not when it is collected)."""
    self.consumed = True
    jax.tree.map(lambda x: x.delete(), self.state)


@dataclasses.dataclass
class SampleOutput:
  """Result of a sampling call.

  Attributes:
    tokens: per row, the new token ids (stop token included when hit). With
      ``num_samples=n`` the rows are prompt-major: prompt i -> rows i*n .. i*n+n-1.
    logprobs: matching base-model log-probs (before temperature / top-k / top-p).
    conversation: the live state when ``keep_state=True``, else None.
    step_logits: [batch, N, v] logits of every step when ``collect_logits`` (tests).
    dropped: per row, tokens dropped from the front of its prompt (or of its whole
      sequence, for a continuation past the limit) to fit ``max_seq_len`` (0: none).
    at_limit: per row, True when it stopped at ``max_seq_len`` before its budget.
  """

  tokens: list[list[int]]
  logprobs: list[list[float]]
  conversation: Conversation | None = None
  step_logits: jax.Array | None = None
  dropped: list[int] = dataclasses.field(default_factory=list)
  at_limit: list[bool] = dataclasses.field(default_factory=list)


class Sampler:
  """Sampling on a split model, optionally sharded over a mesh.

  Args:
    graphdef: the model's graph definition (an NNX ``Transformer``).
    params: its parameters; with a mesh, already placed (e.g. ``models.init(...,
      mesh=mesh)``) or they are resharded with ``models.param_shardings``.
    mesh: optional (data, fsdp, tensor) mesh; the batch is sharded over
      data x fsdp, kv heads over tensor.
    max_cache_len: optional cap on cache slots (conversations grow up to it).
    overflow: what to do with rows longer than ``cfg.max_seq_len``: "truncate" or
      "error" (see ``limits``); None: the gin-configurable ``length_policy()``.

  Attributes:
    length_stats: cumulative ``{"truncated_prompts", "rows_cut_at_limit"}`` counts.
  """

  def __init__(self, graphdef: nnx.GraphDef, params, *, mesh: Mesh | None = None,
               max_cache_len: int | None = None, overflow: str | None = None):
    self.graphdef = graphdef
    self.max_cache_len = max_cache_len
    self.cfg = nnx.merge(graphdef, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)).cfg
    self.mesh = mesh
    if mesh is not None:
      params = jax.device_put(params, model_api.param_shardings(self.cfg, mesh))
    self.params = params
    self.overflow = limits.length_policy() if overflow is None else limits.check_policy(
        overflow)
    self.length_stats = limits.new_stats()
    self._call_stats = limits.new_stats()
    self._depth = 0

  @classmethod
  def from_model(cls, model: nnx.Module, *, mesh: Mesh | None = None,
                 overflow: str | None = None) -> "Sampler":
    graphdef, params = model_api.split(model)
    return cls(graphdef, params, mesh=mesh, overflow=overflow)

  @property
  def max_len(self) -> int:
    """The model's longest sequence (``cfg.max_seq_len``): rows and the cache stay within."""
    return self.cfg.max_seq_len

  # -- placement ---------------------------------------------------------------------------

  def _batch_multiple(self) -> int:
    return 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def _put(self, x: np.ndarray, axes: tuple) -> jax.Array:
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.device_put(x, NamedSharding(self.mesh, logical_to_spec(axes)))

  def _run(self, fn, *args, **kwargs):
    if self.mesh is None:
      return fn(*args, **kwargs)
    with jax.set_mesh(self.mesh):
      return fn(*args, **kwargs)

  # -- length policy -----------------------------------------------------------------------

  @contextlib.contextmanager
  def call_scope(self):
    """One public call: what it truncated or cut is logged once, when it ends."""
    self._depth += 1
    try:
      yield
    finally:
      self._depth -= 1
      if self._depth == 0:
        limits.warn(self._call_stats, self.max_len)
        self._call_stats = limits.new_stats()

  def _count(self, key: str, n: int) -> None:
    self.length_stats[key] += n
    self._call_stats[key] += n

  def fit(self, rows: Sequence[Sequence[int]], *, reserve: int | Sequence[int] = 0,
          what: str = "prompt") -> limits.Fit:
    """Applies the overflow policy to sequences that must leave room for ``reserve``
    more tokens (``limits.fit_rows``); counts the truncated rows."""
    with self.call_scope():
      fit = limits.fit_rows(rows, self.max_len, self.overflow, reserve=reserve, what=what)
      self._count(limits.TRUNCATED, fit.truncated)
      return fit

  # -- public API --------------------------------------------------------------------------

  def start(self, prompts: Sequence[Sequence[int]], *, num_samples: int = 1,
            cache_len: int | None = None,
            min_free: int = 0) -> tuple[Conversation, jax.Array]:
    """Prefills prompts once -> (conversation, first-token logits [batch, v]).

    Args:
      prompts: ragged token-id lists (each non-empty).
      num_samples: rows per prompt sharing the prefill.
      cache_len: initial slots (rounded up to a cache bucket, at most ``max_len``);
        default and minimum: prompt bucket + min_free. Conversations grow on demand.
      min_free: tokens to follow the prompt (e.g. max_new_tokens): the length policy
        leaves room for them and the cache gets as many free slots.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
      raise ValueError("prompts must be a non-empty list of non-empty token lists")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    with self.call_scope():
      return self._prefill(self.fit(prompts, reserve=min_free), num_samples, cache_len,
                           min_free)

  def _prefill(self, fit: limits.Fit, num_samples: int, cache_len: int | None,
               min_free: int) -> tuple[Conversation, jax.Array]:
    p_len = buckets.prompt_bucket(max(len(p) for p in fit.kept), self.max_len - min_free)
    # The prompt batch (sharded at prefill) and so the forked batch (prompts * n) must
    # divide over the mesh; pad prompts so they do.
    batch_prompts = buckets.batch_bucket(len(fit.kept), self._batch_multiple())
    cache_len = min(buckets.cache_bucket(max(cache_len or 0, p_len + max(min_free, 1))),
                    self.max_len)
    tokens, lengths = buckets.left_pad(fit.kept, p_len, batch_prompts)
    state, logits = self._run(engine.prefill, self.graphdef, self.params,
                              self._put(tokens, ("batch", "length")),
                              self._put(lengths, ("batch",)), cache_len=cache_len,
                              num_samples=num_samples)
    rep = lambda xs: [x for x in xs for _ in range(num_samples)]
    conv = Conversation(state, rows=len(fit.kept) * num_samples,
                        batch=batch_prompts * num_samples, cache_len=cache_len, slot=p_len,
                        history=rep(fit.kept), dropped=rep(fit.dropped))
    return conv, logits

  def _pack(self, conv: Conversation) -> Conversation:
    """Drops the padding slots of a conversation (in place of growing past the limit)."""
    conv.consumed = True
    state = self._run(engine.pack, conv.state, cache_len=conv.cache_len)
    return dataclasses.replace(conv, state=state, slot=int(fetch(state.slot)),
                               consumed=False)

  def _ensure_room(self, conv: Conversation, slots: int) -> Conversation:
    """Gives the conversation ``slots`` free slots if ``max_len`` allows: grows it into a
    longer bucket (at most ``max_len``), packing out padding slots first when the limit
    is in the way. May return fewer free slots: callers fit their work to them."""
    if slots <= conv.free_slots:
      return conv
    if conv.slot + slots > self.max_len:
      conv = self._pack(conv)
      if slots <= conv.free_slots:
        return conv
    new_len = min(buckets.cache_bucket(conv.slot + slots), self.max_len)
    if new_len <= conv.cache_len:
      return conv
    if self.max_cache_len and new_len > self.max_cache_len:
      raise ValueError(f"the conversation needs {conv.slot + slots} cache slots, more than "
                       f"max_cache_len={self.max_cache_len}; free slots: {conv.free_slots}")
    conv.consumed = True
    state = self._run(engine.grow, conv.state, cache_len=new_len)
    return dataclasses.replace(conv, state=state, cache_len=new_len, consumed=False)

  def _append(self, conv: Conversation, extra: Sequence[Sequence[int]],
              max_new_tokens: int) -> tuple[Conversation, jax.Array]:
    """Appends ``extra[i]`` to row i, leaving room for ``max_new_tokens``.

    On the live cache when every row fits; otherwise (a row past the limit, or ragged
    padding that leaves no room even packed) by a fresh prefill of every row's whole
    sequence, which the length policy truncates like a prompt.
    """
    self._check_live(conv)
    if len(extra) != conv.rows:
      raise ValueError(f"got {len(extra)} continuations for {conv.rows} rows")
    if any(len(e) == 0 for e in extra):
      raise ValueError("every continuation must have at least one token")
    fits = limits.check_rows(extra, self.max_len, self.overflow, base=conv.lengths,
                             reserve=max_new_tokens, what="continuation")
    if fits and conv.slot <= conv.cache_len:     # else its last decode went round the cache
      longest = max(len(e) for e in extra) + 1                 # +1: pending token
      conv = self._ensure_room(conv, buckets.length_bucket(longest) + max_new_tokens - 1)
      t = buckets.length_bucket(longest, conv.free_slots - max_new_tokens + 1)
      if t + max_new_tokens - 1 <= conv.free_slots:
        return self._extend_chunk(conv, extra, t)
    return self._reprefill(conv, [h + list(e) for h, e in zip(conv.history, extra)],
                           max_new_tokens)

  def _extend_chunk(self, conv: Conversation, extra: Sequence[Sequence[int]], t: int
                    ) -> tuple[Conversation, jax.Array]:
    """Writes the continuations as one left-padded chunk of width ``t`` into the cache."""
    tokens, lengths = buckets.left_pad(extra, t, conv.batch)
    conv.consumed = True
    state, logits = self._run(engine.extend, self.graphdef, self.params, conv.state,
                              self._put(tokens, ("batch", "length")),
                              self._put(lengths, ("batch",)),
                              attend_len=buckets.attend_bucket(conv.slot + t, conv.cache_len))
    return dataclasses.replace(
        conv, state=state, slot=conv.slot + t, consumed=False, dropped=[0] * conv.rows,
        history=[h + list(e) for h, e in zip(conv.history, extra)]), logits

  def _reprefill(self, conv: Conversation, seqs: list[list[int]], max_new_tokens: int
                 ) -> tuple[Conversation, jax.Array]:
    """Replaces a conversation by a fresh prefill of its rows' sequences (its cache is
    freed first)."""
    conv.free()
    return self._prefill(self.fit(seqs, reserve=max_new_tokens, what="sequence"), 1, None,
                         max_new_tokens)

  def extend(self, conv: Conversation, extra: Sequence[Sequence[int]], *,
             max_new_tokens: int = 1) -> tuple[Conversation, jax.Array]:
    """Appends ``extra[i]`` to row i of a conversation (no re-prefill of the history).

    The length policy leaves room for ``max_new_tokens`` to be generated next; the
    cache grows (one copy into the next length bucket) when the chunk and those tokens
    do not fit. Past ``max_len`` (policy "truncate") the rows are prefilled afresh
    from their truncated sequences, in a new conversation.
    """
    with self.call_scope():
      return self._append(conv, extra, max_new_tokens)

  def _budgets(self, conv: Conversation, max_new_tokens: int) -> tuple[Conversation, list]:
    """Per-row token budgets within the limit, and cache room for them.

    Near the limit the cache is packed and grown to ``max_len``; a decode that still
    needs more slots (rows of different lengths and budgets) goes round the cache,
    which never overwrites a decoding row (``engine._feed``). Such a conversation
    is prefilled afresh when continued.
    """
    budget = limits.check_budgets(conv.lengths, max_new_tokens, self.max_len, self.overflow)
    return self._ensure_room(conv, max(budget) - 1), budget

  def _nothing(self, conv: Conversation, budget: list[int], max_new_tokens: int,
               keep_state: bool) -> SampleOutput:
    """The result of a call that had no room to generate: empty rows, state unchanged."""
    cut = limits.cut_rows([0] * conv.rows, budget, max_new_tokens, [False] * conv.rows)
    self._count(limits.CUT, sum(cut))
    return SampleOutput(tokens=[[] for _ in cut], logprobs=[[] for _ in cut],
                        conversation=conv if keep_state else None, dropped=conv.dropped,
                        at_limit=cut)

  def decode(self, conv: Conversation, logits: jax.Array, *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_tokens: Sequence[int] = (), keep_state: bool = False,
             collect_logits: bool = False, row_seeds: Sequence[int] | None = None
             ) -> SampleOutput:
    """Samples from a conversation whose last logits are ``logits`` (see ``start``).

    A row generates at most ``max_len`` minus its length tokens (policy "error": raises).
    ``row_seeds``: a seed per row instead of ``seed`` (draws independent of the batch).
    """
    self._check_live(conv)
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    with self.call_scope():
      conv, budget = self._budgets(conv, max_new_tokens)
      if max(budget) == 0:
        return self._nothing(conv, budget, max_new_tokens, keep_state)
      budget_b = np.pad(np.asarray(budget, np.int32), (0, conv.batch - conv.rows))
      conv.consumed = True
      state, out = self._decode(
          conv, logits, make_keys(seed, row_seeds, conv.rows, conv.batch),
          jnp.float32(max(temperature, 1e-6)),
          jnp.float32(top_p), jnp.asarray(buckets.stop_array(stop_tokens)),
          self._put(budget_b, ("batch",)),
          num_out=buckets.length_bucket(min(max_new_tokens, self.max_len)),
          mode=make_mode(temperature, top_k, top_p), collect_logits=collect_logits)
      toks, lps, counts, steps = fetch(
          (out.tokens_bn, out.logprobs_bn, out.counts_b, out.steps))
      rows = range(conv.rows)
      cut = limits.cut_rows(counts[:conv.rows], budget, max_new_tokens,
                            limits.ends_with_stop(toks, counts[:conv.rows], stop_tokens))
      self._count(limits.CUT, sum(cut))
      result = SampleOutput(tokens=[toks[i, :counts[i]].tolist() for i in rows],
                            logprobs=[lps[i, :counts[i]].tolist() for i in rows],
                            dropped=conv.dropped, at_limit=cut)
      if keep_state:
        # The loop fed steps - 1 tokens (the last sampled one stays pending).
        result.conversation = dataclasses.replace(
            conv, state=state, slot=conv.slot + int(steps) - 1, consumed=False,
            history=[h + t for h, t in zip(conv.history, result.tokens)])
      if collect_logits:
        result.step_logits = out.logits_bnv
      return result

  def _decode(self, conv: Conversation, logits: jax.Array, *args, num_out: int, mode,
              collect_logits: bool) -> tuple[DecodeState, engine.DecodeOutput]:
    """The sampling loop in segments, each attending to the live cache (``attend_bucket``)."""
    carry = self._run(engine.decode_begin, conv.state, logits, *args, num_out=num_out,
                      mode=mode, collect_logits=collect_logits)
    done, slot = False, conv.slot
    while not done:
      carry = self._run(engine.decode_run, self.graphdef, self.params, carry, *args,
                        mode=mode, attend_len=buckets.attend_bucket(slot + 1, conv.cache_len))
      done, slot = fetch((jnp.all(carry.done_b), carry.state.slot))
    return carry.state, carry.output()

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               num_samples: int = 1, cache_len: int | None = None, **kwargs) -> SampleOutput:
    """Prefill + decode. ``kwargs``: sampling arguments of ``decode``."""
    with self.call_scope():
      conv, logits = self.start(prompts, num_samples=num_samples, cache_len=cache_len,
                                min_free=max_new_tokens)
      return self.decode(conv, logits, max_new_tokens=max_new_tokens, **kwargs)

  def continue_generation(self, conv: Conversation, extra: Sequence[Sequence[int]], *,
                          max_new_tokens: int, **kwargs) -> SampleOutput:
    """Extend every row with ``extra`` text, then decode. ``kwargs`` as ``decode``."""
    with self.call_scope():
      conv, logits = self._append(conv, extra, max_new_tokens)
      return self.decode(conv, logits, max_new_tokens=max_new_tokens, **kwargs)

  @staticmethod
  def _check_live(conv: Conversation) -> None:
    if conv.consumed:
      raise ValueError("this Conversation was already continued (its cache was donated); "
                       "use the conversation returned by that call")


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_tokens: Sequence[int] = (), num_samples: int = 1,
             keep_state: bool = False, cache_len: int | None = None,
             mesh: Mesh | None = None, overflow: str | None = None) -> SampleOutput:
  """Samples continuations of ragged prompts (the public sampling API).

  Args:
    model: an NNX ``Transformer``.
    prompts: list of token-id lists (ragged, non-empty).
    max_new_tokens: generation budget per row.
    temperature: 0 = greedy; otherwise softmax temperature.
    top_k: keep the k most likely tokens (0 = off).
    top_p: nucleus threshold (1 = off).
    seed: PRNG seed.
    stop_tokens: ids that end a row (kept in the output).
    num_samples: samples per prompt; one prefill is shared (rows prompt-major).
    keep_state: return the live ``Conversation`` for ``continue_generation``.
    cache_len: initial cache slots (room for later continuations saves a copy);
      default fits the prompt and ``max_new_tokens``; the cache grows on demand.
    mesh: optional mesh to shard the batch and kv heads over.
    overflow: length policy past ``cfg.max_seq_len`` (``Sampler``); None: gin's.

  Returns:
    ``SampleOutput`` with ``.tokens`` and ``.logprobs`` (lists of lists).
  """
  return Sampler.from_model(model, mesh=mesh, overflow=overflow).generate(
      prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
      top_p=top_p, seed=seed, stop_tokens=stop_tokens, num_samples=num_samples,
      keep_state=keep_state, cache_len=cache_len)


def continue_generation(model: nnx.Module, conversation: Conversation,
                        extra: Sequence[Sequence[int]], *, max_new_tokens: int,
                        mesh: Mesh | None = None, overflow: str | None = None,
                        **kwargs) -> SampleOutput:
  """Appends ``extra[i]`` to row i of ``conversation`` and samples again.

  Only the new tokens are prefilled; the conversation's cache is reused (and
  consumed). ``kwargs``: temperature, top_k, top_p, seed, stop_tokens, keep_state.
  """
  return Sampler.from_model(model, mesh=mesh, overflow=overflow).continue_generation(
      conversation, extra, max_new_tokens=max_new_tokens, **kwargs)
