"""Saved models: one phase's output, the next one's input.

A saved model is a folder holding ``model.json`` (the ModelConfig, the model kind, and
free-form info: the tokenizer path, the program that wrote it, where it started from)
and ``params/`` (an Orbax checkpoint of the parameter tree). ``SavedModel.open(path)``
is the typed handle every program takes: its config, kind, tokenizer and lineage (in
``info``: ``program``, ``init_from``, ``reference``, ...) without loading arrays, and
``load`` restores the parameters straight into their shardings.

A Hugging Face model folder (``config.json`` + ``*.safetensors``, any family of
``models.hf_config``) opens the same way: an LM whose tokenizer is the folder itself
when it holds ``tokenizer.json``; ``load`` reads the safetensors straight into their
shardings (``from_hf``). ``save_model(..., hf_dir=...)`` and ``SavedModel.export_hf``
write a language model back as a Hugging Face folder (weights, config, tokenizer files).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models import api, hf
from cai_jax.models.config import ModelConfig
from cai_jax.run import integrity

MODEL_JSON = "model.json"
HF_FORMAT = "huggingface"
# info entries that are paths: recorded absolute, so lineage survives a change of cwd.
_PATH_INFO = ("init_from", "reference", "copied_from", "tokenizer_path", "train_data")
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                       "generation_config.json", "special_tokens_map.json")


def is_hf_folder(path: str) -> bool:
  """True if ``path`` looks like a Hugging Face model folder (config + safetensors)."""
  return (paths.isfile(paths.join(path, "config.json")) and
          bool(paths.glob(path, "*.safetensors")))


def save_model(path: str, params: Any, cfg: ModelConfig, *, kind: api.Kind = "lm",
               info: dict | None = None) -> str:
  """Writes ``params`` and their config to ``path`` (overwrites); returns ``path``.

  ``manifest.json`` (size and sha256 of every parameter file, checked by ``load``) and
  then ``model.json`` are written last, so a folder with one holds a complete model.
  """
  path = paths.absolute(path)
  paths.makedirs(path)
  if paths.exists(paths.join(path, MODEL_JSON)) and jax.process_index() == 0:
    paths.remove(paths.join(path, MODEL_JSON))   # incomplete until rewritten below
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(paths.join(path, "params"), params, force=True)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    integrity.write_manifest(path, under="params")
    workdir_lib.write_json(paths.join(path, MODEL_JSON),
                           {"config": cfg.to_dict(), "kind": kind, "info": _abs_paths(info)})
  return path


def _abs_paths(info: Mapping[str, Any] | None) -> dict:
  return {k: paths.absolute(v) if k in _PATH_INFO and isinstance(v, str) and v else v
          for k, v in (info or {}).items()}


def export_hf(params: Any, cfg: ModelConfig, out: str, *, tokenizer_path: str | None = None,
              dtype: Any = None) -> str:
  """Writes an LM's ``params`` as a Hugging Face folder ``out`` (``models.to_hf``).

  The tokenizer goes along: a Hugging Face tokenizer folder's files are copied; a
  sentencepiece model is copied as ``tokenizer.model``. ``config.json`` records the
  tokenizer's bos / eos / pad ids. Returns ``out``.
  """
  extra = {}
  if tokenizer_path:
    tok = Tokenizer.load(tokenizer_path)
    extra = {"bos_token_id": tok.bos_id, "eos_token_id": list(tok.stop_ids),
             "pad_token_id": tok.pad_id}
  model = api.merge(api.abstract(cfg)[0], params)
  hf.to_hf(model, out, dtype=dtype, extra_config=extra)
  if tokenizer_path and jax.process_index() == 0:
    if paths.isdir(tokenizer_path):
      for name in _HF_TOKENIZER_FILES:
        if paths.isfile(paths.join(tokenizer_path, name)):
          paths.copy(paths.join(tokenizer_path, name), paths.join(out, name))
    else:
      paths.copy(tokenizer_path, paths.join(out, "tokenizer.model"))
  return out


def _restore_options(mesh) -> dict:
  """Orbax options for a restore onto ``mesh``: collective across the job's processes
  (Orbax's default) unless every device of ``mesh`` is this process's (a process-local
  sampling mesh, ``sharding.processes.local_mesh``; or no mesh): then this process
  restores alone, so processes with no share of a sharded job need not load the model."""
  me = jax.process_index()
  if jax.process_count() == 1 or (mesh is not None and any(
      d.process_index != me for d in mesh.devices.flat)):
    return {}
  return {"multiprocessing_options": ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process{me}")}


@dataclasses.dataclass(frozen=True)
class SavedModel:
  """A saved model folder (see the module docstring).

  Attributes:
    path: the folder (absolute).
    config: its ``ModelConfig``.
    kind: "lm" or "scalar".
    info: free-form info (``tokenizer_path``, ``program``, ``init_from``, ...).
  """

  path: str
  config: ModelConfig
  kind: api.Kind
  info: Mapping[str, Any]

  @staticmethod
  def exists(path: str) -> bool:
    """True if ``path`` holds a complete saved model (ours or a Hugging Face folder)."""
    return paths.isfile(paths.join(path, MODEL_JSON)) or is_hf_folder(path)

  @property
  def is_hf(self) -> bool:
    """True for a Hugging Face folder (read with ``from_hf``)."""
    return self.info.get("format") == HF_FORMAT

  @classmethod
  def open(cls, path: str, *, role: str = "model") -> SavedModel:
    """Reads a saved model's ``model.json`` (no arrays).

    Args:
      path: the folder (``~`` is expanded).
      role: what the caller uses it for (``"reward model"``), named in errors.

    Raises:
      FileNotFoundError: ``path`` is not a saved model folder.
    """
    path = paths.absolute(path)
    if not paths.isfile(paths.join(path, MODEL_JSON)) and is_hf_folder(path):
      has_tok = paths.isfile(paths.join(path, "tokenizer.json"))
      return cls(path, hf.read_hf_config(path), "lm",
                 {"format": HF_FORMAT, "program": HF_FORMAT,
                  "tokenizer_path": path if has_tok else None})
    if not cls.exists(path):
      raise FileNotFoundError(f"{role} {path} is neither a saved model folder (no "
                              f"{MODEL_JSON}) nor a Hugging Face model folder (config.json "
                              "+ *.safetensors)")
    meta = workdir_lib.read_json(paths.join(path, MODEL_JSON))
    return cls(path, ModelConfig.from_dict(meta["config"]), meta["kind"],
               dict(meta.get("info", {})))

  def require_kind(self, kind: api.Kind, role: str) -> SavedModel:
    """Returns self, or raises ``ValueError`` if this is not a ``kind`` model."""
    if self.kind != kind:
      what = "a preference model (scalar head)" if kind == "scalar" else "a language model"
      raise ValueError(f"{role} {self.path} is a saved {self.kind!r} model, not {what}")
    return self

  def tokenizer(self, path: str | None = None) -> Tokenizer:
    """The model's tokenizer: ``path`` if given, else the one its info records.

    Raises:
      ValueError: no tokenizer is recorded (and none given), or the tokenizer has more
        ids than the model's vocabulary.
      FileNotFoundError: the tokenizer file does not exist.
    """
    path = path or self.info.get("tokenizer_path")
    if not path:
      raise ValueError(f"{self.path} records no tokenizer_path; give the program a "
                       "tokenizer_path")
    tok = Tokenizer.load(path)
    if tok.vocab_size > self.config.vocab_size:
      raise ValueError(f"tokenizer {tok.path} has {tok.vocab_size} ids but the model "
                       f"{self.path} only {self.config.vocab_size}")
    return tok

  def load(self, *, mesh: Mesh | None = None, kind: api.Kind | None = None,
           cfg_overrides: dict | None = None) -> tuple[nnx.GraphDef, Any]:
    """Restores the parameters; returns ``(graphdef, params)``.

    Args:
      mesh: restore sharded on this mesh; default: the first device.
      kind: load as this kind; a saved LM can be loaded as a "scalar" model (the backbone
        is restored, the scalar head starts at zero).
      cfg_overrides: ModelConfig fields to change (e.g. dtype for inference).
    """
    cfg = self.config
    if cfg_overrides:
      cfg = ModelConfig.from_dict({**cfg.to_dict(), **cfg_overrides})
    kind = kind or self.kind
    if kind != self.kind and (self.kind, kind) != ("lm", "scalar"):
      raise ValueError(f"cannot load the saved {self.kind!r} model {self.path} as {kind!r}")
    if self.is_hf:
      model = hf.from_hf(self.path, cfg.jnp_param_dtype, mesh=mesh)
      if cfg != model.cfg:
        model = api.merge(api.abstract(cfg)[0], api.split(model)[1])
      graphdef, params = api.split(model)
      if kind == "lm":
        return graphdef, params
      graphdef, fresh = api.init(cfg, "scalar", mesh=mesh)
      fresh["backbone"] = {k: v for k, v in params.items() if k != "lm_head_dv"}
      return graphdef, fresh
    graphdef, shapes, _ = api.abstract(cfg, self.kind)
    if mesh is None:
      dev = SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: dev, shapes)
    else:
      shardings = api.param_shardings(cfg, mesh, self.kind)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
    if integrity.has_manifest(self.path):
      integrity.verify_manifest(self.path)
    with ocp.StandardCheckpointer(**_restore_options(mesh)) as ckptr:
      params = ckptr.restore(paths.join(self.path, "params"), target)
    integrity.check_finite(params, f"saved model {self.path}")
    if kind == self.kind:
      return graphdef, params
    graphdef, fresh = api.init(cfg, "scalar", mesh=mesh)
    fresh["backbone"] = {k: v for k, v in params.items() if k != "lm_head_dv"}
    return graphdef, fresh

  def export_hf(self, out: str, *, dtype: Any = None) -> str:
    """Writes this LM (and its tokenizer) as a Hugging Face folder ``out``."""
    self.require_kind("lm", "export_hf")
    _, params = self.load()
    return export_hf(params, self.config, out, tokenizer_path=self.info.get("tokenizer_path"),
                     dtype=dtype)

  def update_info(self, info: Mapping[str, Any]) -> SavedModel:
    """Adds entries to ``info`` on disk; returns the updated handle."""
    if self.is_hf:
      raise ValueError(f"{self.path} is a Hugging Face folder; its info is not writable")
    meta = workdir_lib.read_json(paths.join(self.path, MODEL_JSON))
    meta["info"].update(_abs_paths(info))
    workdir_lib.write_json(paths.join(self.path, MODEL_JSON), meta)
    return SavedModel.open(self.path)
