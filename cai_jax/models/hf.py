"""Hugging Face Llama checkpoints <-> our ``Transformer``: ``from_hf`` and ``to_hf``.

A checkpoint folder holds ``config.json`` and one or several ``*.safetensors`` files
(with ``model.safetensors.index.json`` when sharded). Tensors are read one at a time
with safetensors' numpy API; bfloat16 tensors, which numpy cannot name, are read from
the raw file as ``ml_dtypes.bfloat16``. HF stores linear weights as torch ``[out, in]``;
ours are ``[in, ...out]`` (e.g. q_proj ``[n*k, d]`` <-> ``wq_dnk [d, n, k]``).
This module never imports torch.
"""
from __future__ import annotations

import glob
import json
import math
import os
import struct
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax.nnx import traversals
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from cai_jax.models import api
from cai_jax.models.config import ModelConfig
from cai_jax.models.transformer import Transformer

_INDEX = "model.safetensors.index.json"
_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}  # safe_open(np) reads these
_RAW_DTYPES = {"BF16": ml_dtypes.bfloat16}                              # read from raw bytes
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def config_from_hf(hf: dict[str, Any], dtype: Any = jnp.float32) -> ModelConfig:
  """Maps a HF ``config.json`` dict to a ModelConfig; refuses what we do not implement.

  Raises:
    ValueError: naming the field, for an unsupported model type, rope scaling,
      activation, biases, or a Mistral sliding window.
  """
  model_type = hf.get("model_type", "llama")
  if model_type not in ("llama", "mistral"):
    raise ValueError(f"model_type={model_type!r} is not supported; expected 'llama' (or "
                     "'mistral' without sliding window)")
  if model_type == "mistral" and hf.get("sliding_window") is not None:
    raise ValueError(f"sliding_window={hf['sliding_window']} is not supported (only full "
                     "causal attention); set it to null")
  for field in ("attention_bias", "mlp_bias"):
    if hf.get(field):
      raise ValueError(f"{field}=true is not supported (Llama layers have no biases)")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported; expected 'silu'")
  rope = hf.get("rope_parameters") or {}
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  for field, params in (("rope_parameters", rope), ("rope_scaling", hf.get("rope_scaling"))):
    rope_type = (params or {}).get("rope_type", (params or {}).get("type", "default"))
    if rope_type != "default":
      raise ValueError(f"{field}: rope_type={rope_type!r} is not supported; only 'default'")
  partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise ValueError(f"partial_rotary_factor={partial} is not supported; expected 1.0")
  n_heads = hf["num_attention_heads"]
  dtype_name = jnp.dtype(dtype).name
  return ModelConfig(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
      n_layers=hf["num_hidden_layers"], n_heads=n_heads,
      n_kv_heads=hf.get("num_key_value_heads") or n_heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
      d_ff=hf["intermediate_size"], rope_theta=float(theta),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_seq_len=hf.get("max_position_embeddings", 2048),
      param_dtype=dtype_name, dtype=dtype_name,
      init_std=hf.get("initializer_range", 0.02))


def config_to_hf(cfg: ModelConfig, dtype_name: str) -> dict[str, Any]:
  """A transformers-5 style ``config.json`` dict for ``LlamaForCausalLM``."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
      "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
      "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False,
      "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": cfg.init_std,
      "use_cache": True, "dtype": dtype_name,
  }


def _param_map(cfg: ModelConfig) -> Iterator[tuple[str, tuple, bool]]:
  """(HF key, our param path, transposed?) for every parameter of the LM."""
  yield "model.embed_tokens.weight", ("embed_vd",), False
  for i in range(cfg.n_layers):
    pre = f"model.layers.{i}."
    yield pre + "input_layernorm.weight", ("layers", i, "attn_norm", "scale_d"), False
    for proj, ours in (("q", "wq_dnk"), ("k", "wk_dmk"), ("v", "wv_dmk"), ("o", "wo_nkd")):
      yield pre + f"self_attn.{proj}_proj.weight", ("layers", i, "attn", ours), True
    yield pre + "post_attention_layernorm.weight", ("layers", i, "mlp_norm", "scale_d"), False
    for proj, ours in (("gate", "w_gate_df"), ("up", "w_up_df"), ("down", "w_down_fd")):
      yield pre + f"mlp.{proj}_proj.weight", ("layers", i, "mlp", ours), True
  yield "model.norm.weight", ("final_norm", "scale_d"), False
  if not cfg.tie_embeddings:
    yield "lm_head.weight", ("lm_head_dv",), True


def _hf_shape(our_shape: tuple[int, ...], transposed: bool, path: tuple) -> tuple[int, ...]:
  """Torch [out, in] shape of one of our weights (in dims lead ours, except wo_nkd)."""
  if not transposed:
    return tuple(our_shape)
  n_in = 2 if path[-1] == "wo_nkd" else 1
  return (math.prod(our_shape[n_in:]), math.prod(our_shape[:n_in]))


def _read_header(file: str) -> dict[str, Any]:
  with open(file, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  for info in header.values():
    info["data_start"] = 8 + n
  return header


class _Checkpoint:
  """Index of the tensors in a folder's safetensors files; loads one tensor at a time."""

  def __init__(self, path: str):
    index = os.path.join(path, _INDEX)
    if os.path.exists(index):
      with open(index, encoding="utf-8") as f:
        names = sorted(set(json.load(f)["weight_map"].values()))
      files = [os.path.join(path, name) for name in names]
    else:
      files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
      raise FileNotFoundError(f"no *.safetensors files in {path}")
    self.entries: dict[str, tuple[str, dict]] = {}
    for file in files:
      for key, info in _read_header(file).items():
        if key in self.entries:
          raise ValueError(f"tensor {key!r} is in both {self.entries[key][0]} and {file}")
        self.entries[key] = (file, info)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.entries[key][1]["shape"])

  def load(self, key: str) -> np.ndarray:
    file, info = self.entries[key]
    if info["dtype"] in _NP_DTYPES:
      with safe_open(file, framework="np") as f:
        return f.get_tensor(key)
    if info["dtype"] in _RAW_DTYPES:
      begin, end = info["data_offsets"]
      dt = np.dtype(_RAW_DTYPES[info["dtype"]])
      arr = np.fromfile(file, dtype=dt, count=(end - begin) // dt.itemsize,
                        offset=info["data_start"] + begin)
      return arr.reshape(info["shape"])
    raise ValueError(f"tensor {key!r} has dtype {info['dtype']}; supported: "
                     f"{sorted(_NP_DTYPES) + sorted(_RAW_DTYPES)}")


def _check_keys(ckpt: _Checkpoint, expected: dict[str, tuple[int, ...]], tied: bool) -> None:
  ignored = lambda k: k.endswith(_IGNORED_SUFFIXES) or (tied and k == "lm_head.weight")
  missing = sorted(set(expected) - set(ckpt.entries))
  unexpected = sorted(k for k in set(ckpt.entries) - set(expected) if not ignored(k))
  wrong = [f"{k}: checkpoint {ckpt.shape(k)}, config expects {s}"
           for k, s in expected.items() if k in ckpt.entries and ckpt.shape(k) != s]
  problems = []
  if missing:
    problems.append(f"missing keys ({len(missing)}): {missing[:20]}")
  if unexpected:
    problems.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}")
  if wrong:
    problems.append(f"shape mismatches ({len(wrong)}): {wrong[:20]}")
  if problems:
    raise ValueError("checkpoint does not match its config.json:\n  " + "\n  ".join(problems))


def from_hf(path: str, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> Transformer:
  """Loads a HF Llama-family checkpoint folder as an NNX ``Transformer``.

  Args:
    path: folder with ``config.json`` and ``*.safetensors`` (sharded or not).
    dtype: parameter and compute dtype of the model (float32 or bfloat16).
    mesh: when given, every parameter is placed directly in its sharding from
      ``param_shardings`` (each device receives only its slice).

  Returns:
    The model; ``model.cfg`` is the ModelConfig derived from ``config.json``.

  Raises:
    ValueError: for unsupported config fields, and for missing/unexpected keys or
      shape mismatches (all listed at once, before any tensor is read).
  """
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    cfg = config_from_hf(json.load(f), dtype)
  graphdef, shapes, _ = api.abstract(cfg)
  flat_shapes = traversals.flatten_mapping(shapes)
  shardings = None if mesh is None else traversals.flatten_mapping(
      api.param_shardings(cfg, mesh))
  table = list(_param_map(cfg))
  if {p for _, p, _ in table} != set(flat_shapes):
    raise AssertionError("HF parameter map is out of sync with the model's parameters")
  expected = {k: _hf_shape(flat_shapes[p].shape, t, p) for k, p, t in table}
  ckpt = _Checkpoint(path)
  _check_keys(ckpt, expected, cfg.tie_embeddings)
  np_dtype = np.dtype(cfg.jnp_param_dtype)
  flat = {}
  for key, p, transposed in table:
    w = ckpt.load(key)
    w = w.T.reshape(flat_shapes[p].shape) if transposed else w
    if shardings is None:
      flat[p] = jnp.asarray(w.astype(np_dtype))
    else:
      flat[p] = jax.make_array_from_callback(
          w.shape, shardings[p], lambda idx, w=w: np.ascontiguousarray(w[idx], np_dtype))
    del w
  return api.merge(graphdef, traversals.unflatten_mapping(flat))


def _to_host(x: jax.Array) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def to_hf(model: Transformer, path: str, *, dtype: Any = None,
          max_shard_bytes: int = 5 * 2**30, extra_config: dict[str, Any] | None = None) -> None:
  """Writes ``model`` as a HF ``LlamaForCausalLM`` folder that transformers loads.

  Writes ``config.json`` and ``model.safetensors`` (or ``model-0000i-of-0000N`` shards
  plus ``model.safetensors.index.json`` when larger than ``max_shard_bytes``). Stale
  ``model*.safetensors`` files and index in ``path`` are removed first. In multi-process
  runs every process must call this; only process 0 writes.

  Args:
    model: an LM ``Transformer`` (not a scalar-head model).
    path: output folder (created if needed).
    dtype: saved tensor dtype (float32, bfloat16 or float16); default: the params' dtype.
    max_shard_bytes: largest size of one safetensors file.
    extra_config: extra ``config.json`` entries, e.g. ``bos_token_id``/``eos_token_id``.
  """
  if not isinstance(model, Transformer):
    raise TypeError(f"to_hf writes a Transformer LM, got {type(model).__name__}")
  cfg = model.cfg
  if model.lm_head_dv is None and not cfg.tie_embeddings:
    raise ValueError("model was built without an LM head (with_lm_head=False)")
  np_dtype = np.dtype(cfg.jnp_param_dtype if dtype is None else dtype)
  flat = traversals.flatten_mapping(api.split(model)[1])
  table = [(k, p, t, _hf_shape(flat[p].shape, t, p)) for k, p, t in _param_map(cfg)]
  hosts = {p: _to_host(flat[p]) for _, p, _, _ in table}  # every process joins the gathers
  if jax.process_index() != 0:
    return
  os.makedirs(path, exist_ok=True)
  for stale in glob.glob(os.path.join(path, "model*.safetensors")) + glob.glob(
      os.path.join(path, _INDEX)):
    os.remove(stale)
  groups, size = [[]], 0
  for entry in table:
    nbytes = math.prod(entry[3]) * np_dtype.itemsize
    if groups[-1] and size + nbytes > max_shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(entry)
    size += nbytes
  names = (["model.safetensors"] if len(groups) == 1 else
           [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
  weight_map, total = {}, 0
  for name, group in zip(names, groups):
    tensors = {}
    for key, p, transposed, hf_shape in group:
      w = hosts.pop(p)
      w = w.reshape(hf_shape[::-1]).T if transposed else w
      tensors[key] = np.ascontiguousarray(w, np_dtype)
      weight_map[key] = name
      total += tensors[key].nbytes
    save_file(tensors, os.path.join(path, name), metadata={"format": "pt"})
    del tensors
  if len(groups) > 1:
    with open(os.path.join(path, _INDEX), "w", encoding="utf-8") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  hf_cfg = {**config_to_hf(cfg, np_dtype.name), **(extra_config or {})}
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
