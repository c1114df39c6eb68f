"""Model hyper-parameters: one frozen dataclass, named sizes live in gin files.

One ``ModelConfig`` describes every decoder family we load from Hugging Face (Llama 2/3.x,
Mistral, Qwen2/2.5, Qwen3, Gemma 1/2/3 text, Phi-3): the family differences are fields
(biases, q/k norms, GeGLU, the Gemma ``1 + w`` norm, sandwich norms, embedding scaling,
soft-capping, RoPE scaling, partial rotary, sliding-window layers). ``family`` names the
Hugging Face architecture ``to_hf`` writes back.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = ("silu", "gelu_tanh")
# Rematerialisation of each decoder block in the backward pass (``models.layers.REMAT``).
REMAT = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
FULL, SLIDING = "full_attention", "sliding_attention"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Llama-family decoder.

  Attributes:
    vocab_size: number of token ids.
    d_model: residual stream width.
    n_layers: number of decoder blocks.
    n_heads: query heads.
    n_kv_heads: key/value heads (GQA); must divide ``n_heads``.
    head_dim: per-head width; defaults to ``d_model // n_heads``.
    d_ff: SwiGLU hidden width.
    rope_theta: RoPE base frequency.
    norm_eps: RMSNorm epsilon.
    tie_embeddings: reuse the embedding table as the output projection.
    max_seq_len: longest sequence the model is meant for (sampler cache sizes).
    param_dtype: storage dtype of the parameters ("float32" or "bfloat16").
    dtype: compute dtype of activations; norms, softmax and logits stay float32.
    init_std: standard deviation of the normal weight initialiser.
    family: the Hugging Face architecture the weights follow (``to_hf`` writes it).
    rope_type: "default", "linear" (positions / factor) or "llama3" (Llama 3.1 band-wise
      frequency scaling); applies to full-attention layers.
    rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_len: the
      scaling parameters of ``rope_type`` (HF names without the ``rope_`` prefix).
    local_rope_theta: RoPE base of sliding-window layers when it differs (Gemma 3, with
      plain RoPE there); None: the same RoPE as full layers.
    rotary_fraction: fraction of each head's dimensions that RoPE rotates (Phi-3 family).
    qkv_bias: q/k/v projections have biases (Qwen2).
    qk_norm: RMSNorm over each head's queries and keys before RoPE (Qwen3, Gemma 3).
    norm_offset: RMSNorm multiplies by ``offset + w`` in float32 (1.0 for Gemma); with 0
      it multiplies ``w`` by the normalised input cast back to its dtype (Llama).
    activation: gate activation of the gated MLP, "silu" (SwiGLU) or "gelu_tanh" (GeGLU).
    post_norms: Gemma 2/3 sandwich norms: the attention and MLP outputs are normed before
      they join the residual stream.
    embed_scale: multiply embeddings by sqrt(d_model) (rounded to the parameter dtype).
    attn_softcap: attention logits -> cap * tanh(logits / cap) (Gemma 2).
    final_softcap: output logits -> cap * tanh(logits / cap) (Gemma 2).
    query_pre_attn_scalar: attention scale is this ** -0.5 (Gemma) instead of head_dim ** -0.5.
    sliding_window: a sliding-window layer's query at position i sees keys at positions
      j with i - window < j <= i.
    layer_types: per layer "full_attention" or "sliding_attention"; empty: every layer is
      sliding when ``sliding_window`` is set (Mistral, Phi-3), else full.
    remat: how each decoder block is rematerialised when differentiated (an execution
      choice, not part of the architecture: results are the same): "none" keeps every
      activation for the backward pass; "full" keeps only each block's input and
      recomputes the rest; "dots_saveable" keeps the matmul outputs;
      "dots_with_no_batch_dims_saveable" keeps the weight matmuls' outputs only (not the
      attention scores). ``to_dict`` leaves out the default.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int | None = None
  head_dim: int | None = None
  d_ff: int | None = None
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  max_seq_len: int = 2048
  param_dtype: str = "float32"
  dtype: str = "float32"
  init_std: float = 0.02
  family: str = "llama"
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 0
  local_rope_theta: float | None = None
  rotary_fraction: float = 1.0
  qkv_bias: bool = False
  qk_norm: bool = False
  norm_offset: float = 0.0
  activation: str = "silu"
  post_norms: bool = False
  embed_scale: bool = False
  attn_softcap: float | None = None
  final_softcap: float | None = None
  query_pre_attn_scalar: float | None = None
  sliding_window: int | None = None
  layer_types: tuple[str, ...] = ()
  remat: str = "none"

  def __post_init__(self):
    if isinstance(self.layer_types, list):
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if self.n_kv_heads is None:
      object.__setattr__(self, "n_kv_heads", self.n_heads)
    if self.head_dim is None:
      if self.d_model % self.n_heads:
        raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                         "set head_dim explicitly")
      object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
    if self.d_ff is None:
      object.__setattr__(self, "d_ff", 4 * self.d_model)
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {sorted(_DTYPES)}")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    self._check_family_fields()

  def _check_family_fields(self):
    for name, allowed in (("family", FAMILIES), ("rope_type", ROPE_TYPES),
                          ("activation", ACTIVATIONS), ("remat", REMAT)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
    if self.rope_type != "default" and self.rope_factor <= 0:
      raise ValueError(f"rope_factor must be positive, got {self.rope_factor}")
    if self.rope_type == "llama3" and (
        self.rope_original_max_len <= 0 or self.rope_high_freq_factor <= self.rope_low_freq_factor):
      raise ValueError("rope_type='llama3' needs rope_original_max_len > 0 and "
                       "rope_high_freq_factor > rope_low_freq_factor")
    rot = self.rotary_fraction * self.head_dim
    if not 0 < self.rotary_fraction <= 1 or int(rot) % 2:
      raise ValueError(f"rotary_fraction={self.rotary_fraction} must be in (0, 1] and rotate "
                       f"an even number of the {self.head_dim} head dims")
    for name in ("attn_softcap", "final_softcap", "query_pre_attn_scalar", "sliding_window"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive or None, got {value}")
    if self.layer_types:
      if len(self.layer_types) != self.n_layers:
        raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                         f"{self.n_layers} layers")
      bad = sorted(set(self.layer_types) - {FULL, SLIDING})
      if bad:
        raise ValueError(f"layer_types: unknown {bad}; expected {FULL!r} or {SLIDING!r}")
      if SLIDING in self.layer_types and self.sliding_window is None:
        raise ValueError("layer_types has sliding_attention layers but sliding_window is None")

  def layer_type(self, i: int) -> str:
    """``"full_attention"`` or ``"sliding_attention"`` for layer ``i``."""
    if self.layer_types:
      return self.layer_types[i]
    return SLIDING if self.sliding_window is not None else FULL

  @property
  def has_sliding_layers(self) -> bool:
    return any(self.layer_type(i) == SLIDING for i in range(self.n_layers))

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  def num_params(self) -> int:
    """Parameter count of the LM (computed from shapes, no arrays)."""
    d, f, v = self.d_model, self.d_ff, self.vocab_size
    k = self.head_dim
    attn = d * k * (2 * self.n_heads + 2 * self.n_kv_heads)
    attn += k * (self.n_heads + 2 * self.n_kv_heads) if self.qkv_bias else 0
    attn += 2 * k if self.qk_norm else 0
    block = attn + 3 * d * f + (4 if self.post_norms else 2) * d
    return v * d * (1 if self.tie_embeddings else 2) + self.n_layers * block + d

  def to_dict(self) -> dict[str, Any]:
    """The fields; ``remat`` only when set (saved models and run identities written
    before it existed stay byte-identical)."""
    d = dataclasses.asdict(self)
    if d["remat"] == "none":
      del d["remat"]
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    d = dict(d)
    if "layer_types" in d:
      d["layer_types"] = tuple(d["layer_types"] or ())
    return cls(**d)
