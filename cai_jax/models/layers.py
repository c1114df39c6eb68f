"""Decoder building blocks in Flax NNX: RMSNorm, RoPE, GQA attention, gated MLP.

One set of modules covers the Llama family and its relatives (see ``ModelConfig``):
q/k/v biases, per-head q/k norms, the Gemma ``1 + w`` norm, GeGLU, sandwich norms,
attention soft-capping, RoPE scaling and partial rotary, sliding-window layers.

Weights are ``nnx.Param``s whose ``axes`` metadata holds logical axis names (see
``cai_jax.sharding.rules``). Names carry einsum-letter shape suffixes:
b=batch, t=query length, s=key length, d=d_model, n=heads, m=kv heads, g=n/m,
k=head_dim, f=d_ff, v=vocab.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cai_jax.models.config import SLIDING, ModelConfig

_NEG = -1e30  # finite "minus infinity": fully masked rows stay NaN-free


def _param(rngs: nnx.Rngs, cfg: ModelConfig, shape, axes, std=None, fill=1.0) -> nnx.Param:
  if std is None:
    value = jnp.full(shape, fill, cfg.jnp_param_dtype)
  else:
    value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(
        cfg.jnp_param_dtype)
  return nnx.Param(value, axes=tuple(axes))


class RMSNorm(nnx.Module):
  """Root-mean-square norm over the last axis, computed in float32 (as HF does).

  With ``cfg.norm_offset == 0`` (Llama) the normalised input is cast back to its dtype
  and multiplied by ``w``; otherwise (Gemma) it is multiplied by ``offset + w`` in
  float32 and then cast. The scale starts at the value that makes the norm an identity.
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, dim: int | None = None,
               axes: tuple = ("embed",)):
    self.eps = cfg.norm_eps
    self.offset = cfg.norm_offset
    self.scale_d = _param(rngs, cfg, (dim or cfg.d_model,), axes, fill=1.0 - cfg.norm_offset)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.offset:
      return (x32 * (self.offset + self.scale_d[...].astype(jnp.float32))).astype(x.dtype)
    return self.scale_d[...] * x32.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig, theta: float, scaled: bool) -> np.ndarray:
  """Inverse RoPE frequencies [rot/2] (float32), with the config's scaling if ``scaled``.

  ``linear`` divides every frequency by the factor; ``llama3`` (Llama 3.1) divides the
  low frequencies by it, keeps the high ones and interpolates smoothly in between.
  """
  rot = int(cfg.head_dim * cfg.rotary_fraction)
  exponent = np.arange(0, rot, 2, dtype=np.float32) / np.float32(rot)
  inv = (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)
  if not scaled or cfg.rope_type == "default":
    return inv
  factor = np.float32(cfg.rope_factor)
  if cfg.rope_type == "linear":
    return (inv / factor).astype(np.float32)
  low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
  old = cfg.rope_original_max_len
  wavelen = 2 * math.pi / inv
  scaled_inv = np.where(wavelen > old / low, inv / factor, inv)
  smooth = (old / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled_inv / factor + smooth * scaled_inv
  medium = ~(wavelen < old / high) & ~(wavelen > old / low)
  return np.where(medium, smoothed, scaled_inv).astype(np.float32)


def rope(x_btnk: jax.Array, positions_bt: jax.Array, inv_freq: np.ndarray | float
         ) -> jax.Array:
  """Rotary embedding in the rotate-half layout (first half / second half), as HF.

  Args:
    x_btnk: [b, t, n, k] queries or keys.
    positions_bt: [b, t] positions.
    inv_freq: [r/2] inverse frequencies (``rope_inv_freq``); only the first r of the k
      dims rotate (partial rotary), the rest pass through. A float is a RoPE base theta
      (all dims, no scaling).
  """
  k = x_btnk.shape[-1]
  if np.ndim(inv_freq) == 0:
    inv_freq = 1.0 / (float(inv_freq) ** (np.arange(0, k, 2, dtype=np.float32) / k))
  inv_freq = jnp.asarray(inv_freq, jnp.float32)
  rot = 2 * inv_freq.shape[0]
  freqs = positions_bt.astype(jnp.float32)[..., None] * inv_freq       # [b, t, r/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]          # [b, t, 1, r]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  x32 = x_btnk.astype(jnp.float32)
  xr = x32 if rot == k else x32[..., :rot]
  x1, x2 = jnp.split(xr, 2, axis=-1)
  out = xr * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
  if rot < k:
    out = jnp.concatenate([out, x32[..., rot:]], axis=-1)
  return out.astype(x_btnk.dtype)


def window_mask(mask_bts: jax.Array, q_pos_bt: jax.Array, k_pos_bs: jax.Array,
                window: int) -> jax.Array:
  """Restricts a mask to keys less than ``window`` positions behind the query."""
  return mask_bts & (q_pos_bt[:, :, None] - k_pos_bs[:, None, :] < window)


def _write_cache(cache_bmsk: jax.Array, x_btmk: jax.Array, index) -> jax.Array:
  """Writes ``x`` into the head-major cache at slot ``index`` (a scalar: every row; [b]:
  per row)."""
  x_btmk = x_btmk.astype(cache_bmsk.dtype)
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice(cache_bmsk, jnp.transpose(x_btmk, (0, 2, 1, 3)),
                                        (0, 0, index, 0))
  b, t = x_btmk.shape[:2]
  slots = index[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
  # Row and slot indices around a full head slice: the update is indexed [b, t, m, k].
  return cache_bmsk.at[jnp.arange(b)[:, None], :, slots].set(x_btmk, mode="drop")


def _step_weight(wo_nkd: jax.Array) -> jax.Array:
  n, k, d = wo_nkd.shape
  return jnp.transpose(wo_nkd, (1, 0, 2)).reshape(k * n, d)


def _project_step(out_btnk: jax.Array, w_cd: jax.Array) -> jax.Array:
  """The output projection of a decode step, ``einsum("btnk,nkd->btd")``, written as the
  one matmul XLA:CPU lowers that einsum to: both operands permuted to (k, n) order and
  flattened, so the same products are summed in the same order (bit for bit, tested).
  ``w_cd``: the weight so permuted (``_step_weight``), computed once before a decode loop
  by ``prepare_decode``; XLA's own permutation is inserted after loop-invariant code
  motion and so runs in every step."""
  b, t, n, k = out_btnk.shape
  x = jnp.transpose(out_btnk, (0, 1, 3, 2)).reshape(b, t, k * n)
  return jnp.einsum("btc,cd->btd", x, w_cd)


def prepare_decode(model: nnx.Module) -> nnx.Module:
  """Computes, once before a decode loop, what every decode step of ``model`` would
  otherwise recompute from the weights alone: each attention layer's permuted output
  projection (``_project_step``). Call it on a model merged inside the jitted function
  that runs the loop; a later ``nnx.split`` of it is not supported. Returns the model."""
  for _, m in nnx.iter_modules(model):
    if isinstance(m, Attention):
      m.wo_step = _step_weight(m.wo_nkd[...].astype(m.cfg.jnp_dtype))
  return model


DECODE_ATTENTION = ("auto", "reduce", "dot")


def decode_attention() -> str:
  """How a decode step (one query per row, a KV cache) computes attention: "reduce"
  (products summed over the head-major cache, ``Attention._attend_one``) or "dot" (the
  batched matmuls of every other call). ``$CAI_JAX_DECODE_ATTENTION`` chooses; "auto" (the
  default) is "reduce" on CPU, where it measured faster on toy decode steps
  (BENCHMARKS.md), and "dot" elsewhere. Read when a program is traced.
  """
  choice = os.environ.get("CAI_JAX_DECODE_ATTENTION", "auto")
  if choice not in DECODE_ATTENTION:
    raise ValueError(f"CAI_JAX_DECODE_ATTENTION={choice!r}: expected one of {DECODE_ATTENTION}")
  if choice == "auto":
    return "reduce" if jax.default_backend() == "cpu" else "dot"
  return choice


class Attention(nnx.Module):
  """Grouped-query causal self-attention with an optional KV cache.

  Args:
    cfg: the model configuration.
    rngs: NNX rngs.
    layer: the layer index (its type decides the sliding window and the RoPE base).
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, layer: int = 0):
    d, n, m, k = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    std = cfg.init_std
    self.cfg = cfg
    sliding = cfg.layer_type(layer) == SLIDING
    self.window = cfg.sliding_window if sliding else None
    local = sliding and cfg.local_rope_theta is not None
    theta = cfg.local_rope_theta if local else cfg.rope_theta
    self.inv_freq = tuple(float(x) for x in rope_inv_freq(cfg, theta, scaled=not local))
    self.scale = (cfg.query_pre_attn_scalar or k) ** -0.5
    self.wq_dnk = _param(rngs, cfg, (d, n, k), ("embed", "heads", "kv"), std)
    self.wk_dmk = _param(rngs, cfg, (d, m, k), ("embed", "kv_heads", "kv"), std)
    self.wv_dmk = _param(rngs, cfg, (d, m, k), ("embed", "kv_heads", "kv"), std)
    self.wo_nkd = _param(rngs, cfg, (n, k, d), ("heads", "kv", "embed"), std)
    if cfg.qkv_bias:
      self.bq_nk = _param(rngs, cfg, (n, k), ("heads", "kv"), fill=0.0)
      self.bk_mk = _param(rngs, cfg, (m, k), ("kv_heads", "kv"), fill=0.0)
      self.bv_mk = _param(rngs, cfg, (m, k), ("kv_heads", "kv"), fill=0.0)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(cfg, rngs, dim=k, axes=("kv",))
      self.k_norm = RMSNorm(cfg, rngs, dim=k, axes=("kv",))

  def _qkv(self, x):
    dt = self.cfg.jnp_dtype
    q = jnp.einsum("btd,dnk->btnk", x, self.wq_dnk[...].astype(dt))
    k = jnp.einsum("btd,dmk->btmk", x, self.wk_dmk[...].astype(dt))
    v = jnp.einsum("btd,dmk->btmk", x, self.wv_dmk[...].astype(dt))
    if self.cfg.qkv_bias:
      q, k, v = q + self.bq_nk[...].astype(dt), k + self.bk_mk[...].astype(dt), \
          v + self.bv_mk[...].astype(dt)
    if self.cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    return q, k, v

  def __call__(self, x_btd, positions_bt, mask_bts, cache=None, cache_index=None,
               key_positions_bs=None, attend_len=None):
    """Attends queries of ``x`` to its own keys, or to a cache.

    Args:
      x_btd: [b, t, d] input.
      positions_bt: [b, t] int32 positions (for RoPE).
      mask_bts: [b, t, s] bool, True where query t may attend key s.
      cache: optional dict with ``k``/``v`` [b, m, S, k] (head-major); the new keys and
        values are written at ``cache_index`` and attention runs over all S slots.
      cache_index: int32 scalar, the slot of the first new token; or [b] int32, one
        slot per row (rows with their own write pointers; writes past the end are dropped).
      key_positions_bs: [b, s] int32 position of every key (a sliding-window layer
        needs them); default ``positions_bt`` (no cache).
      attend_len: static; with a cache, attend only to its first ``attend_len`` slots
        (the caller guarantees every key the mask allows lies there: the live part of
        the cache), so a step costs what the live length costs, not the cache length.
        The new keys are still written into the whole cache.

    Returns:
      (output [b, t, d], updated cache or None).
    """
    dt = self.cfg.jnp_dtype
    q, k, v = self._qkv(x_btd.astype(dt))
    q = rope(q, positions_bt, np.asarray(self.inv_freq, np.float32))
    k = rope(k, positions_bt, np.asarray(self.inv_freq, np.float32))
    if cache is not None:
      k, v = (_write_cache(cache[n], x, cache_index) for n, x in (("k", k), ("v", v)))
      cache = {"k": k, "v": v}
      if attend_len is not None and attend_len < k.shape[2]:
        k, v = k[:, :, :attend_len], v[:, :, :attend_len]
        mask_bts = mask_bts[..., :attend_len]
        if key_positions_bs is not None:
          key_positions_bs = key_positions_bs[:, :attend_len]
    if self.window is not None:
      if key_positions_bs is None:
        if cache is not None:
          raise ValueError("a sliding-window layer attending to a cache needs key_positions_bs")
        key_positions_bs = positions_bt
      mask_bts = window_mask(mask_bts, positions_bt, key_positions_bs, self.window)
    if cache is not None and q.shape[1] == 1:
      if decode_attention() == "reduce":
        out = self._attend_one(q, k, v, mask_bts)
      else:
        out = self._attend(q, k, v, mask_bts, heads_first=True)
      w_cd = getattr(self, "wo_step", None)          # set by prepare_decode
      if w_cd is None:
        w_cd = _step_weight(self.wo_nkd[...].astype(dt))
      return _project_step(out, w_cd), cache
    out = self._attend(q, k, v, mask_bts, heads_first=cache is not None)
    return jnp.einsum("btnk,nkd->btd", out, self.wo_nkd[...].astype(dt)), cache

  def _scores(self, s):
    s = s * self.scale
    cap = self.cfg.attn_softcap
    return s if cap is None else jnp.tanh(s / cap) * cap

  def _attend(self, q, k, v, mask_bts, heads_first=False):
    """Attention as two batched matmuls: q [b, t, n, k], k/v [b, s, m, k] (or [b, m, s, k],
    a cache, with ``heads_first``) -> [b, t, n, k]."""
    dt = self.cfg.jnp_dtype
    b, t, n, kd = q.shape
    m = k.shape[1 if heads_first else 2]
    kv = "bmsk" if heads_first else "bsmk"
    q = q.reshape(b, t, m, n // m, kd)
    scores = self._scores(
        jnp.einsum(f"btmgk,{kv}->bmgts", q, k.astype(dt)).astype(jnp.float32))
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    return jnp.einsum(f"bmgts,{kv}->btmgk", probs, v.astype(dt)).reshape(b, t, n, kd)

  def _attend_one(self, q, k, v, mask_bts):
    """One query per row (a decode step) over the head-major cache (k/v [b, m, s, k]) as
    products summed in float32: XLA fuses each into one pass over the cache
    (``decode_attention``)."""
    b, _, n, kd = q.shape
    m = k.shape[1]
    f32 = jnp.float32
    q = q.reshape(b, m, n // m, 1, kd).astype(f32)                          # [b, m, g, 1, k]
    scores = self._scores(jnp.sum(q * k.astype(f32)[:, :, None], axis=-1))  # [b, m, g, s]
    scores = jnp.where(mask_bts[:, None, :, :], scores, _NEG)              # mask [b, 1, 1, s]
    probs = jax.nn.softmax(scores, axis=-1).astype(self.cfg.jnp_dtype).astype(f32)
    out = jnp.sum(probs[..., None] * v.astype(f32)[:, :, None], axis=3)    # [b, m, g, k]
    return out.astype(self.cfg.jnp_dtype).reshape(b, 1, n, kd)


class MLP(nnx.Module):
  """Gated feed-forward: down(act(gate(x)) * up(x)); act = silu (SwiGLU) or tanh-GELU."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f, std = cfg.d_model, cfg.d_ff, cfg.init_std
    self.dtype = cfg.jnp_dtype
    self.activation = cfg.activation
    self.w_gate_df = _param(rngs, cfg, (d, f), ("embed", "mlp"), std)
    self.w_up_df = _param(rngs, cfg, (d, f), ("embed", "mlp"), std)
    self.w_down_fd = _param(rngs, cfg, (f, d), ("mlp", "embed"), std)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    dt = self.dtype
    x = x_btd.astype(dt)
    gate = jnp.einsum("btd,df->btf", x, self.w_gate_df[...].astype(dt))
    up = jnp.einsum("btd,df->btf", x, self.w_up_df[...].astype(dt))
    act = jax.nn.silu(gate) if self.activation == "silu" else jax.nn.gelu(gate, approximate=True)
    return jnp.einsum("btf,fd->btd", act * up, self.w_down_fd[...].astype(dt))


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)); x + mlp(norm(x)).

  With ``cfg.post_norms`` (Gemma 2/3) the attention and MLP outputs pass through their
  own norm before the residual add.
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, layer: int = 0):
    self.attn_norm = RMSNorm(cfg, rngs)
    self.attn = Attention(cfg, rngs, layer)
    self.mlp_norm = RMSNorm(cfg, rngs)
    self.mlp = MLP(cfg, rngs)
    self.post_norms = cfg.post_norms
    if cfg.post_norms:
      self.post_attn_norm = RMSNorm(cfg, rngs)
      self.post_mlp_norm = RMSNorm(cfg, rngs)

  def __call__(self, x_btd, positions_bt, mask_bts, cache=None, cache_index=None,
               key_positions_bs=None, attend_len=None):
    h, cache = self.attn(self.attn_norm(x_btd), positions_bt, mask_bts, cache, cache_index,
                         key_positions_bs, attend_len)
    if self.post_norms:
      h = self.post_attn_norm(h)
    x_btd = x_btd + h
    h = self.mlp(self.mlp_norm(x_btd))
    if self.post_norms:
      h = self.post_mlp_norm(h)
    return x_btd + h, cache
