"""Saving and loading a model's parameters (one phase's output, the next one's input).

A saved model is a folder holding ``model.json`` (the ModelConfig, the model kind,
and free-form info such as the tokenizer path and the source checkpoint) and
``params/`` (an Orbax checkpoint of the parameter tree). Loading restores straight
into the target shardings.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, SingleDeviceSharding

from cai_jax.models import api
from cai_jax.models.config import ModelConfig

_MODEL_JSON = "model.json"


def save_model(path: str, params: Any, cfg: ModelConfig, *, kind: api.Kind = "lm",
               info: dict | None = None) -> None:
  """Writes ``params`` and their config to ``path`` (overwrites)."""
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, "params"), params, force=True)
    ckptr.wait_until_finished()
  meta = {"config": cfg.to_dict(), "kind": kind, "info": info or {}}
  if jax.process_index() == 0:
    tmp = os.path.join(path, _MODEL_JSON + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(path, _MODEL_JSON))  # model.json last: marks completion


def is_saved_model(path: str) -> bool:
  return os.path.isfile(os.path.join(path, _MODEL_JSON))


def update_model_info(path: str, info: dict) -> None:
  """Adds entries to a saved model's free-form ``info``."""
  with open(os.path.join(path, _MODEL_JSON), encoding="utf-8") as f:
    meta = json.load(f)
  meta["info"].update(info)
  tmp = os.path.join(path, _MODEL_JSON + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(path, _MODEL_JSON))


def read_model_info(path: str) -> tuple[ModelConfig, str, dict]:
  """(config, kind, info) of a saved model, without loading arrays."""
  if not is_saved_model(path):
    raise FileNotFoundError(f"{path} is not a saved model (no {_MODEL_JSON})")
  with open(os.path.join(path, _MODEL_JSON), encoding="utf-8") as f:
    meta = json.load(f)
  return ModelConfig.from_dict(meta["config"]), meta["kind"], meta.get("info", {})


def load_model(path: str, *, mesh: Mesh | None = None, kind: api.Kind | None = None,
               cfg_overrides: dict | None = None):
  """Loads a saved model.

  Args:
    path: folder written by ``save_model``.
    mesh: restore sharded on this mesh; default: the first device.
    kind: expected kind; a saved LM can be loaded as a "scalar" model, in which case
      the backbone is restored from it and the scalar head starts at zero.
    cfg_overrides: ModelConfig fields to change (e.g. dtype for inference).

  Returns:
    (cfg, graphdef, params, info).
  """
  cfg, saved_kind, info = read_model_info(path)
  if cfg_overrides:
    cfg = ModelConfig.from_dict({**cfg.to_dict(), **cfg_overrides})
  kind = kind or saved_kind
  graphdef, shapes, axes = api.abstract(cfg, saved_kind)
  if mesh is None:
    dev = SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: dev, shapes)
  else:
    shardings = api.param_shardings(cfg, mesh, saved_kind)
  target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(os.path.abspath(path), "params"), target)
  if kind == saved_kind:
    return cfg, graphdef, params, info
  if (saved_kind, kind) != ("lm", "scalar"):
    raise ValueError(f"cannot load a saved {saved_kind!r} model as {kind!r}")
  graphdef, fresh = api.init(cfg, "scalar", mesh=mesh)
  backbone = {k: v for k, v in params.items() if k != "lm_head_dv"}
  fresh["backbone"] = backbone
  return cfg, graphdef, fresh, info
