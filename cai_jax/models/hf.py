"""Hugging Face checkpoints <-> our ``Transformer``: ``from_hf`` and ``to_hf``.

The families (Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 1/2/3 text, Phi-3) and their
config fields are mapped in ``hf_config``; this module maps the tensors.

A checkpoint folder holds ``config.json`` and one or several ``*.safetensors`` files
(with ``model.safetensors.index.json`` when sharded). Tensors are read one at a time
with safetensors' numpy API; bfloat16 tensors, which numpy cannot name, are read from
the raw file as ``ml_dtypes.bfloat16``. HF stores linear weights as torch ``[out, in]``;
ours are ``[in, ...out]`` (e.g. q_proj ``[n*k, d]`` <-> ``wq_dnk [d, n, k]``).
This module never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import tempfile
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

from cai_jax import paths
from cai_jax.models import api
from cai_jax.models.config import ModelConfig
from cai_jax.models.hf_config import config_from_hf, config_to_hf
from cai_jax.models.transformer import Transformer

_INDEX = "model.safetensors.index.json"
_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}  # safe_open(np) reads these
_RAW_DTYPES = {"BF16": ml_dtypes.bfloat16}                              # read from raw bytes
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One HF tensor and the parameter(s) of ours it holds.

  ``layout``: "copy" (same shape: norms, embeddings), "bias" (HF [out] -> ours [n, k]) or
  "linear" (HF torch [out, in] -> ours [in..., out...]); a fused HF tensor (Phi-3's
  ``qkv_proj`` and ``gate_up_proj``) lists several paths, its rows split in that order.
  """

  key: str
  paths: tuple[tuple, ...]
  layout: str = "linear"


def _param_map(cfg: ModelConfig) -> Iterator[_Entry]:
  """Every HF tensor of ``cfg.family`` and where it goes."""
  fused = cfg.family == "phi3"
  yield _Entry("model.embed_tokens.weight", (("embed_vd",),), "copy")
  for i in range(cfg.n_layers):
    pre, lay = f"model.layers.{i}.", ("layers", i)
    att, mlp = lay + ("attn",), lay + ("mlp",)
    yield _Entry(pre + "input_layernorm.weight", (lay + ("attn_norm", "scale_d"),), "copy")
    qkv = (att + ("wq_dnk",), att + ("wk_dmk",), att + ("wv_dmk",))
    if fused:
      yield _Entry(pre + "self_attn.qkv_proj.weight", qkv)
    else:
      for proj, path in zip("qkv", qkv):
        yield _Entry(pre + f"self_attn.{proj}_proj.weight", (path,))
    yield _Entry(pre + "self_attn.o_proj.weight", (att + ("wo_nkd",),))
    if cfg.qkv_bias:
      for proj, ours in (("q", "bq_nk"), ("k", "bk_mk"), ("v", "bv_mk")):
        yield _Entry(pre + f"self_attn.{proj}_proj.bias", (att + (ours,),), "bias")
    if cfg.qk_norm:
      for proj in ("q", "k"):
        yield _Entry(pre + f"self_attn.{proj}_norm.weight", (att + (f"{proj}_norm", "scale_d"),),
                     "copy")
    norms = ((("post_attention_layernorm", "post_attn_norm"),
              ("pre_feedforward_layernorm", "mlp_norm"),
              ("post_feedforward_layernorm", "post_mlp_norm")) if cfg.post_norms else
             (("post_attention_layernorm", "mlp_norm"),))
    for hf_name, ours in norms:
      yield _Entry(pre + f"{hf_name}.weight", (lay + (ours, "scale_d"),), "copy")
    gate_up = (mlp + ("w_gate_df",), mlp + ("w_up_df",))
    if fused:
      yield _Entry(pre + "mlp.gate_up_proj.weight", gate_up)
    else:
      for proj, path in zip(("gate", "up"), gate_up):
        yield _Entry(pre + f"mlp.{proj}_proj.weight", (path,))
    yield _Entry(pre + "mlp.down_proj.weight", (mlp + ("w_down_fd",),))
  yield _Entry("model.norm.weight", (("final_norm", "scale_d"),), "copy")
  if not cfg.tie_embeddings:
    yield _Entry("lm_head.weight", (("lm_head_dv",),))


def _n_in(path: tuple) -> int:
  """How many leading dims of our weight are the torch ``in`` dims."""
  return 2 if path[-1] == "wo_nkd" else 1


def _hf_shape(entry: _Entry, shapes: dict) -> tuple[int, ...]:
  """The HF tensor shape of an entry, from our parameter shapes."""
  ours = [tuple(shapes[p].shape) for p in entry.paths]
  if entry.layout == "copy":
    return ours[0]
  if entry.layout == "bias":
    return (math.prod(ours[0]),)
  n_in = _n_in(entry.paths[0])
  return (sum(math.prod(s[n_in:]) for s in ours), math.prod(ours[0][:n_in]))


def _to_ours(entry: _Entry, w: np.ndarray, shapes: dict) -> dict[tuple, np.ndarray]:
  """Splits / transposes one HF tensor into our parameter(s)."""
  if entry.layout != "linear":
    return {entry.paths[0]: w.reshape(shapes[entry.paths[0]].shape)}
  out, row = {}, 0
  for p in entry.paths:
    shape = tuple(shapes[p].shape)
    rows = math.prod(shape[_n_in(p):])
    out[p] = w[row:row + rows].T.reshape(shape)
    row += rows
  return out


def _to_hf(entry: _Entry, ours: dict[tuple, np.ndarray]) -> np.ndarray:
  """Our parameter(s) -> one HF tensor (the inverse of ``_to_ours``)."""
  if entry.layout == "copy":
    return ours[entry.paths[0]]
  if entry.layout == "bias":
    return ours[entry.paths[0]].reshape(-1)
  parts = []
  for p in entry.paths:
    w = ours[p]
    n_in = math.prod(w.shape[:_n_in(p)])
    parts.append(w.reshape(n_in, -1).T)
  return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def _read_header(file: str) -> dict[str, Any]:
  with paths.open(file, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  for info in header.values():
    info["data_start"] = 8 + n
  return header


class _Checkpoint:
  """Index of the tensors in a folder's safetensors files; loads one tensor at a time."""

  def __init__(self, path: str):
    index = paths.join(path, _INDEX)
    if paths.exists(index):
      with paths.open(index) as f:
        names = sorted(set(json.load(f)["weight_map"].values()))
      files = [paths.join(path, name) for name in names]
    else:
      files = paths.glob(path, "*.safetensors")
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
    if not paths.is_local(file) and info["dtype"] in {**_NP_DTYPES, **_RAW_DTYPES}:
      begin, end = info["data_offsets"]   # a URL: read the tensor's byte range
      with paths.open(file, "rb") as f:
        f.seek(info["data_start"] + begin)
        raw = f.read(end - begin)
      dt = np.dtype({**_NP_DTYPES, **_RAW_DTYPES}[info["dtype"]]).newbyteorder("<")
      return np.frombuffer(raw, dtype=dt).reshape(info["shape"]).copy()
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
  """Loads a HF checkpoint folder (any family of ``hf_config``) as an NNX ``Transformer``.

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
  cfg = read_hf_config(path, dtype)
  graphdef, shapes, _ = api.abstract(cfg)
  flat_shapes = traversals.flatten_mapping(shapes)
  shardings = None if mesh is None else traversals.flatten_mapping(
      api.param_shardings(cfg, mesh))
  table = list(_param_map(cfg))
  if {p for e in table for p in e.paths} != set(flat_shapes):
    raise AssertionError("HF parameter map is out of sync with the model's parameters")
  expected = {e.key: _hf_shape(e, flat_shapes) for e in table}
  ckpt = _Checkpoint(path)
  _check_keys(ckpt, expected, cfg.tie_embeddings)
  np_dtype = np.dtype(cfg.jnp_param_dtype)
  flat = {}
  for entry in table:
    for p, w in _to_ours(entry, ckpt.load(entry.key), flat_shapes).items():
      if shardings is None:
        flat[p] = jnp.asarray(w.astype(np_dtype))
      else:
        flat[p] = jax.make_array_from_callback(
            w.shape, shardings[p], lambda idx, w=w: np.ascontiguousarray(w[idx], np_dtype))
      del w
  return api.merge(graphdef, traversals.unflatten_mapping(flat))


def read_hf_config(path: str, dtype: Any = jnp.float32) -> ModelConfig:
  """The ModelConfig of a HF checkpoint folder (``config.json``; see ``hf_config``).

  Raises:
    FileNotFoundError: no ``config.json`` in ``path``.
    ValueError: an unsupported configuration (naming the field and the file).
  """
  file = paths.join(path, "config.json")
  if not paths.isfile(file):
    raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
  with paths.open(file) as f:
    raw = json.load(f)
  try:
    return config_from_hf(raw, dtype)
  except (KeyError, ValueError) as e:
    what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
    raise ValueError(f"{file}: {what}") from None


def _save_file(tensors: dict[str, np.ndarray], file: str) -> None:
  """``safetensors``' ``save_file``; to a URL through a local temporary file."""
  if paths.is_local(file):
    save_file(tensors, file, metadata={"format": "pt"})
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, paths.basename(file))
    save_file(tensors, local, metadata={"format": "pt"})
    paths.copy(local, file)


def _to_host(x: jax.Array) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def to_hf(model: Transformer, path: str, *, dtype: Any = None,
          max_shard_bytes: int = 5 * 2**30, extra_config: dict[str, Any] | None = None) -> None:
  """Writes ``model`` as a HF folder of its family (``LlamaForCausalLM``, ...).

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
  hf_cfg = {**config_to_hf(cfg, np.dtype(cfg.jnp_param_dtype if dtype is None else dtype).name),
            **(extra_config or {})}
  np_dtype = np.dtype(hf_cfg["dtype"])
  flat = traversals.flatten_mapping(api.split(model)[1])
  table = list(_param_map(cfg))
  hosts = {p: _to_host(flat[p]) for e in table for p in e.paths}  # every process gathers
  if jax.process_index() != 0:
    return
  paths.makedirs(path)
  for stale in paths.glob(path, "model*.safetensors") + paths.glob(path, _INDEX):
    paths.remove(stale)
  groups, size = [[]], 0
  for entry in table:
    nbytes = math.prod(_hf_shape(entry, flat)) * np_dtype.itemsize
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
    for entry in group:
      tensors[entry.key] = np.ascontiguousarray(
          _to_hf(entry, {p: hosts.pop(p) for p in entry.paths}), np_dtype)
      weight_map[entry.key] = name
      total += tensors[entry.key].nbytes
    _save_file(tensors, paths.join(path, name))
    del tensors
  if len(groups) > 1:
    with paths.open(paths.join(path, _INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  with paths.open(paths.join(path, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
