"""Host-side sampler API: ragged token lists in, tokens and log-probs out.

``Sampler`` wraps a split model ``(graphdef, params)`` and an optional mesh; it
pads inputs to shape buckets, calls the jitted programs of ``engine`` and trims
the results. ``generate`` / ``continue_generation`` are the module-level
shortcuts on an NNX model (the public API in the README).

Prefix reuse:
* ``num_samples=n`` prefills each prompt once and forks the cache n ways.
* ``keep_state=True`` returns a ``Conversation`` (the live KV cache); passing it
  to ``continue_generation`` with extra text per row appends that text (one
  chunked prefill of the new tokens only) and samples again. A conversation is
  consumed by the call that continues it (its cache is donated).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cai_jax.models import api as model_api
from cai_jax.sampling import buckets, engine
from cai_jax.sampling.cache import DecodeState
from cai_jax.sampling.select import make_mode
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
  """

  state: DecodeState
  rows: int
  batch: int
  cache_len: int
  slot: int
  consumed: bool = False

  @property
  def free_slots(self) -> int:
    return self.cache_len - self.slot


@dataclasses.dataclass
class SampleOutput:
  """Result of a sampling call.

  Attributes:
    tokens: per row, the new token ids (stop token included when hit). With
      ``num_samples=n`` the rows are prompt-major: prompt i -> rows i*n .. i*n+n-1.
    logprobs: matching base-model log-probs (before temperature / top-k / top-p).
    conversation: the live state when ``keep_state=True``, else None.
    step_logits: [batch, N, v] logits of every step when ``collect_logits`` (tests).
  """

  tokens: list[list[int]]
  logprobs: list[list[float]]
  conversation: Conversation | None = None
  step_logits: jax.Array | None = None


class Sampler:
  """Sampling on a split model, optionally sharded over a mesh.

  Args:
    graphdef: the model's graph definition (an NNX ``Transformer``).
    params: its parameters; with a mesh, already placed (e.g. ``models.init(...,
      mesh=mesh)``) or they are resharded with ``models.param_shardings``.
    mesh: optional (data, fsdp, tensor) mesh; the batch is sharded over
      data x fsdp, kv heads over tensor.
    max_cache_len: optional cap on cache slots (conversations grow up to it).
  """

  def __init__(self, graphdef: nnx.GraphDef, params, *, mesh: Mesh | None = None,
               max_cache_len: int | None = None):
    self.graphdef = graphdef
    self.max_cache_len = max_cache_len
    self.cfg = nnx.merge(graphdef, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)).cfg
    self.mesh = mesh
    if mesh is not None:
      params = jax.device_put(params, model_api.param_shardings(self.cfg, mesh))
    self.params = params

  @classmethod
  def from_model(cls, model: nnx.Module, *, mesh: Mesh | None = None) -> "Sampler":
    graphdef, params = model_api.split(model)
    return cls(graphdef, params, mesh=mesh)

  # -- placement ---------------------------------------------------------------------------

  def _batch_multiple(self) -> int:
    if self.mesh is None:
      return 1
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def _put(self, x: np.ndarray, axes: tuple) -> jax.Array:
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.device_put(x, NamedSharding(self.mesh, logical_to_spec(axes)))

  def _run(self, fn, *args, **kwargs):
    if self.mesh is None:
      return fn(*args, **kwargs)
    with jax.set_mesh(self.mesh):
      return fn(*args, **kwargs)

  # -- public API --------------------------------------------------------------------------

  def start(self, prompts: Sequence[Sequence[int]], *, num_samples: int = 1,
            cache_len: int | None = None,
            min_free: int = 0) -> tuple[Conversation, jax.Array]:
    """Prefills prompts once -> (conversation, first-token logits [batch, v]).

    Args:
      prompts: ragged token-id lists (each non-empty).
      num_samples: rows per prompt sharing the prefill.
      cache_len: initial slots (rounded up to a cache bucket); default and minimum:
        prompt bucket + min_free. Conversations grow on demand anyway.
      min_free: slots needed after the prompt (e.g. max_new_tokens).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
      raise ValueError("prompts must be a non-empty list of non-empty token lists")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    p_len = buckets.length_bucket(max(len(p) for p in prompts))
    mult = self._batch_multiple()
    # The prompt batch (sharded at prefill) and so the forked batch (prompts * n) must
    # divide over the mesh; pad prompts so they do.
    batch_prompts = buckets.batch_bucket(len(prompts), mult)
    cache_len = buckets.cache_bucket(max(cache_len or 0, p_len + max(min_free, 1)))
    tokens, lengths = buckets.left_pad(prompts, p_len, batch_prompts)
    state, logits = self._run(engine.prefill, self.graphdef, self.params,
                              self._put(tokens, ("batch", "length")),
                              self._put(lengths, ("batch",)), cache_len=cache_len,
                              num_samples=num_samples)
    conv = Conversation(state, rows=len(prompts) * num_samples,
                        batch=batch_prompts * num_samples, cache_len=cache_len, slot=p_len)
    return conv, logits

  def _ensure_room(self, conv: Conversation, slots: int) -> Conversation:
    """Moves the conversation to a longer cache bucket when fewer than ``slots`` are free."""
    if slots <= conv.free_slots:
      return conv
    new_len = buckets.cache_bucket(conv.slot + slots)
    if self.max_cache_len and new_len > self.max_cache_len:
      raise ValueError(f"the conversation needs {conv.slot + slots} cache slots, more than "
                       f"max_cache_len={self.max_cache_len}; free slots: {conv.free_slots}")
    conv.consumed = True
    state = self._run(engine.grow, conv.state, cache_len=new_len)
    return dataclasses.replace(conv, state=state, cache_len=new_len, consumed=False)

  def extend(self, conv: Conversation, extra: Sequence[Sequence[int]], *, min_free: int = 0
             ) -> tuple[Conversation, jax.Array]:
    """Appends ``extra[i]`` to row i of a conversation (no re-prefill of the history).

    The cache grows (one copy into the next length bucket) when the chunk plus
    ``min_free`` more slots do not fit.
    """
    self._check_live(conv)
    if len(extra) != conv.rows:
      raise ValueError(f"got {len(extra)} continuations for {conv.rows} rows")
    if any(len(e) == 0 for e in extra):
      raise ValueError("every continuation must have at least one token")
    t = buckets.length_bucket(max(len(e) for e in extra) + 1)   # +1: pending token
    conv = self._ensure_room(conv, t + min_free)
    tokens, lengths = buckets.left_pad(extra, t, conv.batch)
    conv.consumed = True
    state, logits = self._run(engine.extend, self.graphdef, self.params, conv.state,
                              self._put(tokens, ("batch", "length")),
                              self._put(lengths, ("batch",)))
    return dataclasses.replace(conv, state=state, slot=conv.slot + t, consumed=False), logits

  def decode(self, conv: Conversation, logits: jax.Array, *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_tokens: Sequence[int] = (), keep_state: bool = False,
             collect_logits: bool = False) -> SampleOutput:
    """Samples from a conversation whose last logits are ``logits`` (see ``start``)."""
    self._check_live(conv)
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    conv = self._ensure_room(conv, max_new_tokens - 1)
    mode = make_mode(temperature, top_k, top_p)
    conv.consumed = True
    state, out = self._run(
        engine.decode, self.graphdef, self.params, conv.state, logits,
        jax.random.key(seed), jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p),
        jnp.asarray(buckets.stop_array(stop_tokens)), jnp.int32(max_new_tokens),
        num_out=buckets.length_bucket(max_new_tokens), mode=mode,
        collect_logits=collect_logits)
    toks, lps, counts, steps = jax.device_get(
        (out.tokens_bn, out.logprobs_bn, out.counts_b, out.steps))
    result = SampleOutput(tokens=[toks[i, :counts[i]].tolist() for i in range(conv.rows)],
                          logprobs=[lps[i, :counts[i]].tolist() for i in range(conv.rows)])
    if keep_state:
      # The loop fed steps - 1 tokens (the last sampled one stays pending).
      result.conversation = dataclasses.replace(conv, state=state,
                                                slot=conv.slot + int(steps) - 1,
                                                consumed=False)
    if collect_logits:
      result.step_logits = out.logits_bnv
    return result

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               num_samples: int = 1, cache_len: int | None = None, **kwargs) -> SampleOutput:
    """Prefill + decode. ``kwargs``: sampling arguments of ``decode``."""
    conv, logits = self.start(prompts, num_samples=num_samples, cache_len=cache_len,
                              min_free=max_new_tokens)
    return self.decode(conv, logits, max_new_tokens=max_new_tokens, **kwargs)

  def continue_generation(self, conv: Conversation, extra: Sequence[Sequence[int]], *,
                          max_new_tokens: int, **kwargs) -> SampleOutput:
    """Extend every row with ``extra`` text, then decode. ``kwargs`` as ``decode``."""
    conv, logits = self.extend(conv, extra, min_free=max_new_tokens - 1)
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
             mesh: Mesh | None = None) -> SampleOutput:
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

  Returns:
    ``SampleOutput`` with ``.tokens`` and ``.logprobs`` (lists of lists).
  """
  return Sampler.from_model(model, mesh=mesh).generate(
      prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
      top_p=top_p, seed=seed, stop_tokens=stop_tokens, num_samples=num_samples,
      keep_state=keep_state, cache_len=cache_len)


def continue_generation(model: nnx.Module, conversation: Conversation,
                        extra: Sequence[Sequence[int]], *, max_new_tokens: int,
                        mesh: Mesh | None = None, **kwargs) -> SampleOutput:
  """Appends ``extra[i]`` to row i of ``conversation`` and samples again.

  Only the new tokens are prefilled; the conversation's cache is reused (and
  consumed). ``kwargs``: temperature, top_k, top_p, seed, stop_tokens, keep_state.
  """
  return Sampler.from_model(model, mesh=mesh).continue_generation(
      conversation, extra, max_new_tokens=max_new_tokens, **kwargs)
