"""The decoder-only transformer and its scalar-head variant (reward / value).

Used in a pure style: ``graphdef, params = split(model)`` once; jitted functions
take ``params`` (a nested dict of arrays) and call ``nnx.merge`` inside.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cai_jax.models.config import ModelConfig
from cai_jax.models.layers import Block, RMSNorm, _param


def causal_mask(segment_ids_bt: jax.Array | None, b: int, t: int) -> jax.Array:
  """[b, t, t] bool: causal, and within one segment when packing (segment 0 = pad)."""
  mask = jnp.tril(jnp.ones((t, t), bool))[None]
  if segment_ids_bt is None:
    return jnp.broadcast_to(mask, (b, t, t))
  same = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
  return mask & same & (segment_ids_bt[:, None, :] != 0)


# ``ModelConfig.remat`` -> the ``jax.checkpoint`` policy (None: save only the block input).
REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_block(layer: Block, policy_name: str):
  """``layer``'s cache-free forward ``(x, positions, mask, key_positions) -> x`` under
  ``jax.checkpoint``.

  The block is split into its graph and parameters so that the checkpointed function is
  a pure function of arrays; the parameters stay inputs (not saved residuals).
  """
  graphdef, state = nnx.split(layer)
  policy = REMAT_POLICIES[policy_name]

  @functools.partial(jax.checkpoint, policy=policy, prevent_cse=True)
  def forward(state, x_btd, positions_bt, mask_bts, key_positions_bs):
    return nnx.merge(graphdef, state)(x_btd, positions_bt, mask_bts,
                                      key_positions_bs=key_positions_bs)[0]

  return functools.partial(forward, state)


def default_positions(segment_ids_bt: jax.Array | None, b: int, t: int) -> jax.Array:
  """Positions 0..t-1, restarting at every new segment when packing."""
  if segment_ids_bt is None:
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
  idx = jnp.arange(t, dtype=jnp.int32)[None]
  starts = jnp.concatenate(
      [jnp.ones((b, 1), bool), segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=1)
  start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return idx - start_idx


class Transformer(nnx.Module):
  """Llama-family decoder: embed (scaled for Gemma) -> blocks -> final norm -> (LM head).

  Args:
    cfg: the model configuration.
    rngs: NNX rngs for initialisation.
    with_lm_head: build the output projection (untied case); scalar-head models
      drop it.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, with_lm_head: bool = True):
    self.cfg = cfg
    self.embed_vd = _param(rngs, cfg, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                           cfg.init_std)
    self.layers = nnx.List([Block(cfg, rngs, i) for i in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg, rngs)
    lm_head = None
    if with_lm_head and not cfg.tie_embeddings:
      lm_head = _param(rngs, cfg, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                       cfg.init_std)
    self.lm_head_dv = nnx.data(lm_head)

  def hidden(self, tokens_bt, *, positions_bt=None, segment_ids_bt=None, mask_bts=None,
             cache=None, cache_index=None, key_positions_bs=None, attend_len=None):
    """Final-norm hidden states.

    Args:
      tokens_bt: [b, t] int32.
      positions_bt: [b, t] int32; default 0..t-1 (restarting per segment).
      segment_ids_bt: [b, t] int32 packing ids (0 = padding); optional.
      mask_bts: [b, t, s] bool attention mask; default causal (and per segment).
      cache: optional list (one per layer) of ``{"k", "v"}`` [b, m, S, k] arrays.
      cache_index: int32 scalar slot where the new tokens' keys are written, or [b]
        int32 slots, one per row.
      key_positions_bs: [b, S] int32 position of every cache slot after the write; needed
        with a cache when the model has sliding-window layers.
      attend_len: static; with a cache, attention reads only its first ``attend_len``
        slots (every key the mask allows must lie there; see ``layers.Attention``).

    Returns:
      (hidden [b, t, d] in the compute dtype, updated cache or None).
    """
    b, t = tokens_bt.shape
    if positions_bt is None:
      positions_bt = default_positions(segment_ids_bt, b, t)
    if mask_bts is None:
      mask_bts = causal_mask(segment_ids_bt, b, t)
    x = jnp.take(self.embed_vd[...], tokens_bt, axis=0)
    if self.cfg.embed_scale:
      x = x * jnp.asarray(self.cfg.d_model ** 0.5, x.dtype)
    x = x.astype(self.cfg.jnp_dtype)
    new_cache = [] if cache is not None else None
    if cache is None and self.cfg.remat != "none":   # training / scoring passes
      for layer in self.layers:
        x = remat_block(layer, self.cfg.remat)(x, positions_bt, mask_bts, key_positions_bs)
      return self.final_norm(x), None
    for i, layer in enumerate(self.layers):
      x, layer_cache = layer(x, positions_bt, mask_bts,
                             None if cache is None else cache[i], cache_index, key_positions_bs,
                             attend_len)
      if cache is not None:
        new_cache.append(layer_cache)
    return self.final_norm(x), new_cache

  def logits(self, hidden_btd: jax.Array) -> jax.Array:
    """[b, t, d] hidden -> [b, t, v] float32 logits."""
    h = hidden_btd.astype(self.cfg.jnp_dtype)
    if self.lm_head_dv is None:
      w = self.embed_vd[...].astype(h.dtype)
      out = jnp.einsum("btd,vd->btv", h, w, preferred_element_type=jnp.float32)
    else:
      w = self.lm_head_dv[...].astype(h.dtype)
      out = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
    cap = self.cfg.final_softcap
    return out if cap is None else jnp.tanh(out / cap) * cap

  def __call__(self, tokens_bt, **kwargs) -> jax.Array:
    """Full forward: [b, t] tokens -> [b, t, v] float32 logits."""
    h, _ = self.hidden(tokens_bt, **kwargs)
    return self.logits(h)


class ScalarHeadModel(nnx.Module):
  """Transformer backbone + a linear head giving one scalar per position.

  The preference model reads the scalar at each sequence's last real token
  (its reward); the PPO critic reads it at every token (its value).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.backbone = Transformer(cfg, rngs=rngs, with_lm_head=False)
    self.head_w_d = nnx.Param(jnp.zeros((cfg.d_model,), cfg.jnp_param_dtype), axes=("embed",))
    self.head_b = nnx.Param(jnp.zeros((), jnp.float32), axes=())

  def __call__(self, tokens_bt, **kwargs) -> jax.Array:
    """[b, t] tokens -> [b, t] float32 scalars."""
    h, _ = self.backbone.hidden(tokens_bt, **kwargs)
    w = self.head_w_d[...].astype(jnp.float32)
    return jnp.einsum("btd,d->bt", h.astype(jnp.float32), w) + self.head_b[...]


def last_token_values(values_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """Picks each row's value at its last position where ``mask_bt`` is true -> [b]."""
  t = mask_bt.shape[1]
  last = jnp.max(jnp.where(mask_bt, jnp.arange(t)[None], -1), axis=1)
  last = jnp.maximum(last, 0)
  return jnp.take_along_axis(values_bt, last[:, None], axis=1)[:, 0]
