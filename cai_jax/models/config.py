"""Model hyper-parameters: one frozen dataclass, named sizes live in gin files."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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

  def __post_init__(self):
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

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  def num_params(self) -> int:
    """Parameter count of the LM (computed from shapes, no arrays)."""
    d, f, v = self.d_model, self.d_ff, self.vocab_size
    attn = d * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
    block = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_embeddings else 2) + self.n_layers * block + d

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    return cls(**d)
