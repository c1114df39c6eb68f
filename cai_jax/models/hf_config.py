"""Hugging Face ``config.json`` <-> ``ModelConfig``, family by family.

Families (``model_type``): ``llama`` (Llama 2, 3, 3.1/3.2 with ``llama3`` or ``linear``
RoPE scaling), ``mistral`` (sliding window), ``qwen2`` (Qwen2/2.5: q/k/v biases),
``qwen3`` (per-head q/k norms), ``gemma``, ``gemma2`` and ``gemma3_text`` (GeGLU, the
``1 + w`` norm, sandwich norms, embedding scaling, soft-capping, ``query_pre_attn_scalar``,
local sliding-window and global layers with their own RoPE bases, q/k norms for Gemma 3)
and ``phi3`` (fused projections, partial rotary, sliding window).

A field missing from ``config.json`` takes the value transformers would give it for that
family (e.g. Gemma 2 soft-caps at 50 / 30 by default, Mistral slides over 4,096 tokens),
because that is the model the checkpoint's authors ran. A configuration the model cannot
represent exactly is refused with a ``ValueError`` naming the field: never loaded
approximately.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from cai_jax.models.config import FULL, SLIDING, ModelConfig

_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
         "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM",
         "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
         "phi3": "Phi3ForCausalLM"}
_GEMMAS = ("gemma", "gemma2", "gemma3_text")
# transformers' defaults for the fields that change the computation, per family.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": 4096},
    "qwen2": {"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28},
    "qwen3": {"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28,
              "head_dim": 128},
    "gemma": {"head_dim": 256, "hidden_act": "gelu_pytorch_tanh", "tie_word_embeddings": True},
    "gemma2": {"head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
               "tie_word_embeddings": True, "query_pre_attn_scalar": 256,
               "sliding_window": 4096, "final_logit_softcapping": 30.0,
               "attn_logit_softcapping": 50.0},
    "gemma3_text": {"head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
                    "tie_word_embeddings": True, "query_pre_attn_scalar": 256,
                    "sliding_window": 4096, "final_logit_softcapping": None,
                    "attn_logit_softcapping": None},
    "phi3": {"sliding_window": None},
}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_SCALED_ROPE = ("linear", "llama3")


def _rope_type(params: dict | None) -> str:
  params = params or {}
  return params.get("rope_type", params.get("type", "default")) or "default"


def _rope_fields(params: dict, field: str) -> dict[str, Any]:
  """ModelConfig RoPE-scaling fields from one HF rope parameter dict."""
  rope_type = _rope_type(params)
  if rope_type == "dynamic":
    raise ValueError(
        f"{field}: rope_type='dynamic' is not supported: transformers recomputes its "
        "frequencies from the longest position in each batch (and differently with and "
        "without a cache), which a fixed model cannot reproduce exactly")
  if rope_type not in ("default",) + _SCALED_ROPE:
    raise ValueError(f"{field}: rope_type={rope_type!r} is not supported; supported: "
                     f"'default', {', '.join(repr(t) for t in _SCALED_ROPE)}")
  if rope_type == "default":
    return {}
  out = {"rope_type": rope_type, "rope_factor": float(params["factor"])}
  if rope_type == "llama3":
    out.update(rope_low_freq_factor=float(params["low_freq_factor"]),
               rope_high_freq_factor=float(params["high_freq_factor"]),
               rope_original_max_len=int(params["original_max_position_embeddings"]))
  return out


def _rope(hf: dict, family: str) -> dict[str, Any]:
  """RoPE bases, scaling and partial rotary, from new- or old-style configs."""
  if family == "gemma3_text":
    return _gemma3_rope(hf)
  params, field = dict(hf.get("rope_parameters") or {}), "rope_parameters"
  legacy = hf.get("rope_scaling")
  if legacy and _rope_type(params) == "default":
    params.update(legacy)
    params["rope_type"] = _rope_type(legacy)
    field = "rope_scaling"
  out = _rope_fields(params, field)
  out["rope_theta"] = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial != 1.0 and family != "phi3":
    raise ValueError(f"partial_rotary_factor={partial} is only supported for phi3")
  out["rotary_fraction"] = float(partial)
  return out


def _gemma3_rope(hf: dict) -> dict[str, Any]:
  params = hf.get("rope_parameters")
  if params and FULL in params:
    full, local = dict(params[FULL] or {}), dict(params.get(SLIDING) or {})
  else:  # old style: top-level bases, rope_scaling for the global layers only
    full = dict(hf.get("rope_scaling") or {})
    full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
  if _rope_type(local) != "default":
    raise ValueError(f"rope_parameters.{SLIDING}: rope_type={_rope_type(local)!r} is not "
                     "supported; local layers use plain RoPE")
  out = _rope_fields(full, f"rope_parameters.{FULL}")
  out["rope_theta"] = float(full.get("rope_theta", 1_000_000.0))
  out["local_rope_theta"] = float(local.get("rope_theta", 10_000.0))
  return out


def _layers(hf: dict, family: str, n_layers: int) -> dict[str, Any]:
  """sliding_window and layer_types as transformers derives them for the family."""
  window = hf.get("sliding_window")
  if family in ("llama", "gemma"):
    return {}
  if family in ("qwen2", "qwen3"):
    if not hf.get("use_sliding_window"):
      return {}
    types = hf.get("layer_types") or [
        SLIDING if i >= hf["max_window_layers"] else FULL for i in range(n_layers)]
  elif family in ("mistral", "phi3"):
    if hf.get("layer_types"):
      raise ValueError(f"layer_types is not supported for {family} (transformers ignores it "
                       "there too); use a family with alternating attention")
    types = [SLIDING] * n_layers if window is not None else []
  elif family == "gemma2":
    types = hf.get("layer_types") or [SLIDING if (i + 1) % 2 else FULL
                                      for i in range(n_layers)]
  else:  # gemma3_text
    if hf.get("use_bidirectional_attention"):
      raise ValueError("use_bidirectional_attention=true is not supported (causal LMs only)")
    pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))
    types = hf.get("layer_types") or [SLIDING if (i + 1) % pattern else FULL
                                      for i in range(n_layers)]
  if SLIDING not in types:
    return {}
  if window is None:
    raise ValueError("layer_types has sliding_attention layers but sliding_window is null")
  return {"sliding_window": int(window), "layer_types": tuple(types)}


def _check_biases(hf: dict, family: str) -> None:
  if family == "qwen2":
    fields = ("mlp_bias",)
  else:
    fields = ("attention_bias", "mlp_bias")
  for field in fields:
    if hf.get(field):
      raise ValueError(f"{field}=true is not supported for {family} (no output-projection "
                       "or MLP biases; only Qwen2's q/k/v biases)")


def config_from_hf(hf: dict[str, Any], dtype: Any = jnp.float32) -> ModelConfig:
  """Maps a HF ``config.json`` dict to a ModelConfig; refuses what we do not implement.

  Raises:
    ValueError: naming the field, for an unsupported model type, RoPE scaling,
      activation, bias, attention variant or soft-capping combination.
  """
  family = hf.get("model_type", "llama")
  if family == "gemma3":
    raise ValueError("model_type='gemma3' is the multimodal Gemma 3; load the text model "
                     "(model_type 'gemma3_text', Gemma3ForCausalLM, e.g. gemma-3-270m/1b)")
  if family not in _ARCH:
    raise ValueError(f"model_type={family!r} is not supported; supported: {sorted(_ARCH)}")
  hf = {**_DEFAULTS[family], **{k: v for k, v in hf.items() if v is not None or
                                k in ("sliding_window", "final_logit_softcapping",
                                      "attn_logit_softcapping")}}
  _check_biases(hf, family)
  act_field = "hidden_activation" if family in ("gemma2", "gemma3_text") else "hidden_act"
  act = hf.get(act_field, "silu")
  if act not in _ACTIVATIONS:
    raise ValueError(f"{act_field}={act!r} is not supported; expected one of "
                     f"{sorted(_ACTIVATIONS)}")
  n_heads, n_layers = hf["num_attention_heads"], hf["num_hidden_layers"]
  gemma = family in _GEMMAS
  dtype_name = jnp.dtype(dtype).name
  extra = {}
  if family in ("gemma2", "gemma3_text"):
    # transformers' Gemma 3 attention never applies attn_logit_softcapping (q/k norms
    # replaced it); the field is read but unused there, so it is here too.
    extra = dict(post_norms=True, query_pre_attn_scalar=float(hf["query_pre_attn_scalar"]),
                 attn_softcap=hf["attn_logit_softcapping"] if family == "gemma2" else None,
                 final_softcap=hf["final_logit_softcapping"])
  return ModelConfig(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=n_layers,
      n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
      d_ff=hf["intermediate_size"], norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_seq_len=hf.get("max_position_embeddings", 2048), param_dtype=dtype_name,
      dtype=dtype_name, init_std=hf.get("initializer_range", 0.02), family=family,
      qkv_bias=family == "qwen2", qk_norm=family in ("qwen3", "gemma3_text"),
      norm_offset=1.0 if gemma else 0.0, activation=_ACTIVATIONS[act], embed_scale=gemma,
      **_rope(hf, family), **_layers(hf, family, n_layers), **extra)


# -- export ------------------------------------------------------------------------------

def _rope_params(cfg: ModelConfig, theta: float, scaled: bool) -> dict[str, Any]:
  out: dict[str, Any] = {"rope_theta": theta, "rope_type": "default"}
  if scaled and cfg.rope_type != "default":
    out.update(rope_type=cfg.rope_type, factor=cfg.rope_factor)
  if scaled and cfg.rope_type == "llama3":
    out.update(low_freq_factor=cfg.rope_low_freq_factor,
               high_freq_factor=cfg.rope_high_freq_factor,
               original_max_position_embeddings=cfg.rope_original_max_len)
  return out


def _expected_family_fields(cfg: ModelConfig) -> dict[str, Any]:
  """The family-specific fields ``config_from_hf`` would set for ``cfg.family``."""
  f = cfg.family
  gemma = f in _GEMMAS
  return {"qkv_bias": f == "qwen2", "qk_norm": f in ("qwen3", "gemma3_text"),
          "norm_offset": 1.0 if gemma else 0.0, "embed_scale": gemma,
          "post_norms": f in ("gemma2", "gemma3_text"),
          "activation": "gelu_tanh" if gemma else "silu"}


def check_exportable(cfg: ModelConfig) -> None:
  """Raises ValueError if ``cfg`` is not exactly representable as its HF family."""
  problems = [f"{k}={getattr(cfg, k)!r} (family {cfg.family!r} has {v!r})"
              for k, v in _expected_family_fields(cfg).items() if getattr(cfg, k) != v]
  f = cfg.family
  if cfg.rotary_fraction != 1.0 and f != "phi3":
    problems.append(f"rotary_fraction={cfg.rotary_fraction} (only phi3)")
  if cfg.local_rope_theta is not None and f != "gemma3_text":
    problems.append("local_rope_theta (only gemma3_text)")
  if f not in ("gemma2", "gemma3_text") and (cfg.attn_softcap or cfg.final_softcap or
                                             cfg.query_pre_attn_scalar):
    problems.append("soft-capping / query_pre_attn_scalar (only gemma2 / gemma3_text)")
  if f == "gemma3_text" and cfg.attn_softcap:
    problems.append("attn_softcap (transformers' Gemma 3 ignores attention soft-capping)")
  if cfg.has_sliding_layers and f in ("llama", "gemma"):
    problems.append(f"sliding-window layers (not in {f})")
  uniform = len(set(cfg.layer_type(i) for i in range(cfg.n_layers))) == 1
  if cfg.layer_types and not uniform and f in ("mistral", "phi3"):
    problems.append(f"mixed layer types (not in {f})")
  if problems:
    raise ValueError(f"this model cannot be written as a {_ARCH[f]} exactly: "
                     + "; ".join(problems))


def config_to_hf(cfg: ModelConfig, dtype_name: str) -> dict[str, Any]:
  """A transformers-5 ``config.json`` dict for ``cfg.family`` (see ``check_exportable``)."""
  check_exportable(cfg)
  f = cfg.family
  out: dict[str, Any] = {
      "architectures": [_ARCH[f]], "model_type": f, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
      "initializer_range": cfg.init_std, "use_cache": True, "dtype": dtype_name,
      "attention_bias": False, "pad_token_id": None, "bos_token_id": None,
      "eos_token_id": None}
  act = "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else "silu"
  out["hidden_activation" if f in ("gemma2", "gemma3_text") else "hidden_act"] = act
  if f == "gemma3_text":
    out["rope_parameters"] = {
        FULL: _rope_params(cfg, cfg.rope_theta, True),
        SLIDING: _rope_params(cfg, cfg.local_rope_theta or cfg.rope_theta, False)}
  else:
    out["rope_parameters"] = _rope_params(cfg, cfg.rope_theta, True)
  if f == "phi3":
    out["rope_parameters"]["partial_rotary_factor"] = cfg.rotary_fraction
  types = [cfg.layer_type(i) for i in range(cfg.n_layers)]
  if f in ("mistral", "phi3"):
    out["sliding_window"] = cfg.sliding_window if cfg.has_sliding_layers else None
  elif f in ("qwen2", "qwen3"):
    out.update(use_sliding_window=cfg.has_sliding_layers, sliding_window=cfg.sliding_window,
               max_window_layers=cfg.n_layers, layer_types=types)
  elif f in ("gemma2", "gemma3_text"):
    scalar = cfg.query_pre_attn_scalar
    out.update(sliding_window=cfg.sliding_window or 4096, layer_types=types,
               query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
               attn_logit_softcapping=cfg.attn_softcap,
               final_logit_softcapping=cfg.final_softcap)
  if f == "llama":
    out["mlp_bias"] = False
  return out
