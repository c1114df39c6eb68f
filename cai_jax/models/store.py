"""Saved models: one phase's output, the next one's input.

A saved model is a folder holding ``model.json`` (the ModelConfig, the model kind, and
free-form info: the tokenizer path, the program that wrote it, where it started from)
and ``params/`` (an Orbax checkpoint of the parameter tree). ``SavedModel.open(path)``
is the typed handle every program takes: its config, kind, tokenizer and lineage (in
``info``: ``program``, ``init_from``, ``reference``, ...) without loading arrays, and
``load`` restores the parameters straight into their shardings.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from cai_jax import workdir as workdir_lib
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models import api
from cai_jax.models.config import ModelConfig

MODEL_JSON = "model.json"


def save_model(path: str, params: Any, cfg: ModelConfig, *, kind: api.Kind = "lm",
               info: dict | None = None) -> str:
  """Writes ``params`` and their config to ``path`` (overwrites); returns ``path``.

  ``model.json`` is written last, so a folder with one holds a complete model.
  """
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, "params"), params, force=True)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(path, MODEL_JSON),
                           {"config": cfg.to_dict(), "kind": kind, "info": info or {}})
  return path


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
    """True if ``path`` holds a complete saved model."""
    return os.path.isfile(os.path.join(path, MODEL_JSON))

  @classmethod
  def open(cls, path: str, *, role: str = "model") -> SavedModel:
    """Reads a saved model's ``model.json`` (no arrays).

    Args:
      path: the folder.
      role: what the caller uses it for (``"reward model"``), named in errors.

    Raises:
      FileNotFoundError: ``path`` is not a saved model folder.
    """
    path = os.path.abspath(os.fspath(path))
    if not cls.exists(path):
      raise FileNotFoundError(f"{role} {path} is not a saved model folder (no {MODEL_JSON})")
    meta = workdir_lib.read_json(os.path.join(path, MODEL_JSON))
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
    graphdef, shapes, _ = api.abstract(cfg, self.kind)
    if mesh is None:
      dev = SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree.map(lambda _: dev, shapes)
    else:
      shardings = api.param_shardings(cfg, mesh, self.kind)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(os.path.join(self.path, "params"), target)
    if kind == self.kind:
      return graphdef, params
    graphdef, fresh = api.init(cfg, "scalar", mesh=mesh)
    fresh["backbone"] = {k: v for k, v in params.items() if k != "lm_head_dv"}
    return graphdef, fresh

  def update_info(self, info: Mapping[str, Any]) -> SavedModel:
    """Adds entries to ``info`` on disk; returns the updated handle."""
    meta = workdir_lib.read_json(os.path.join(self.path, MODEL_JSON))
    meta["info"].update(info)
    workdir_lib.write_json(os.path.join(self.path, MODEL_JSON), meta)
    return SavedModel.open(self.path)
