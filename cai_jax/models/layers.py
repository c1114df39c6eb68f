"""Llama building blocks in Flax NNX: RMSNorm, RoPE, GQA attention, SwiGLU.

Weights are ``nnx.Param``s whose ``axes`` metadata holds logical axis names (see
``cai_jax.sharding.rules``). Names carry einsum-letter shape suffixes:
b=batch, t=query length, s=key length, d=d_model, n=heads, m=kv heads, g=n/m,
k=head_dim, f=d_ff, v=vocab.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cai_jax.models.config import ModelConfig

_NEG = -1e30  # finite "minus infinity": fully masked rows stay NaN-free


def _param(rngs: nnx.Rngs, cfg: ModelConfig, shape, axes, std=None) -> nnx.Param:
  if std is None:
    value = jnp.ones(shape, cfg.jnp_param_dtype)
  else:
    value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(
        cfg.jnp_param_dtype)
  return nnx.Param(value, axes=tuple(axes))


class RMSNorm(nnx.Module):
  """Root-mean-square norm, computed in float32 (as HF Llama does)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.eps = cfg.norm_eps
    self.scale_d = _param(rngs, cfg, (cfg.d_model,), ("embed",))

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    x32 = x_btd.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale_d[...] * x32.astype(x_btd.dtype)


def rope(x_btnk: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in the rotate-half layout (first half / second half), as HF."""
  k = x_btnk.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))
  freqs = positions_bt.astype(jnp.float32)[..., None] * inv_freq       # [b, t, k/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]          # [b, t, 1, k]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  x1, x2 = jnp.split(x_btnk.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x_btnk.astype(jnp.float32) * cos + rotated * sin).astype(x_btnk.dtype)


class Attention(nnx.Module):
  """Grouped-query causal self-attention with an optional KV cache."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, n, m, k = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    std = cfg.init_std
    self.cfg = cfg
    self.wq_dnk = _param(rngs, cfg, (d, n, k), ("embed", "heads", "kv"), std)
    self.wk_dmk = _param(rngs, cfg, (d, m, k), ("embed", "kv_heads", "kv"), std)
    self.wv_dmk = _param(rngs, cfg, (d, m, k), ("embed", "kv_heads", "kv"), std)
    self.wo_nkd = _param(rngs, cfg, (n, k, d), ("heads", "kv", "embed"), std)

  def __call__(self, x_btd, positions_bt, mask_bts, cache=None, cache_index=None):
    """Attends queries of ``x`` to its own keys, or to a cache.

    Args:
      x_btd: [b, t, d] input.
      positions_bt: [b, t] int32 positions (for RoPE).
      mask_bts: [b, t, s] bool, True where query t may attend key s.
      cache: optional dict with ``k``/``v`` [b, S, m, k]; the new keys and values are
        written at ``cache_index`` and attention runs over all S slots.
      cache_index: int32 scalar, the slot of the first new token.

    Returns:
      (output [b, t, d], updated cache or None).
    """
    cfg, dt = self.cfg, self.cfg.jnp_dtype
    x = x_btd.astype(dt)
    q = jnp.einsum("btd,dnk->btnk", x, self.wq_dnk[...].astype(dt))
    k = jnp.einsum("btd,dmk->btmk", x, self.wk_dmk[...].astype(dt))
    v = jnp.einsum("btd,dmk->btmk", x, self.wv_dmk[...].astype(dt))
    q = rope(q, positions_bt, cfg.rope_theta)
    k = rope(k, positions_bt, cfg.rope_theta)
    if cache is not None:
      idx = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), idx)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), idx)
      cache = {"k": k, "v": v}
    b, t, n, kd = q.shape
    m = k.shape[2]
    q = q.reshape(b, t, m, n // m, kd)
    scores = jnp.einsum("btmgk,bsmk->bmgts", q, k.astype(dt)).astype(jnp.float32)
    scores = scores * (kd ** -0.5)
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum("bmgts,bsmk->btmgk", probs, v.astype(dt)).reshape(b, t, n, kd)
    return jnp.einsum("btnk,nkd->btd", out, self.wo_nkd[...].astype(dt)), cache


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f, std = cfg.d_model, cfg.d_ff, cfg.init_std
    self.dtype = cfg.jnp_dtype
    self.w_gate_df = _param(rngs, cfg, (d, f), ("embed", "mlp"), std)
    self.w_up_df = _param(rngs, cfg, (d, f), ("embed", "mlp"), std)
    self.w_down_fd = _param(rngs, cfg, (f, d), ("mlp", "embed"), std)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    dt = self.dtype
    x = x_btd.astype(dt)
    gate = jnp.einsum("btd,df->btf", x, self.w_gate_df[...].astype(dt))
    up = jnp.einsum("btd,df->btf", x, self.w_up_df[...].astype(dt))
    return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, self.w_down_fd[...].astype(dt))


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg, rngs)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_btd, positions_bt, mask_bts, cache=None, cache_index=None):
    h, cache = self.attn(self.attn_norm(x_btd), positions_bt, mask_bts, cache, cache_index)
    x_btd = x_btd + h
    x_btd = x_btd + self.mlp(self.mlp_norm(x_btd))
    return x_btd, cache
