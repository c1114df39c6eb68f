"""Functional entry points: build, split/merge, sharded init, logits.

A model is an NNX module; training and sampling code work on the pair
``(graphdef, params)`` where ``params`` is a nested dict of arrays (the module's
parameters as a pure pytree, int keys for layer lists).
"""
from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import traversals
from jax.sharding import Mesh

from cai_jax.models.config import ModelConfig
from cai_jax.models.transformer import ScalarHeadModel, Transformer
from cai_jax.sharding import rules as rules_lib

Kind = Literal["lm", "scalar"]
Params = dict


def build(cfg: ModelConfig, kind: Kind = "lm", *, seed: int | jax.Array = 0) -> nnx.Module:
  """Builds (and initialises, unsharded) a model of the given kind."""
  key = jax.random.key(seed) if isinstance(seed, int) else seed
  rngs = nnx.Rngs(params=key)
  if kind == "lm":
    return Transformer(cfg, rngs=rngs)
  if kind == "scalar":
    return ScalarHeadModel(cfg, rngs=rngs)
  raise ValueError(f"unknown model kind {kind!r}; expected 'lm' or 'scalar'")


def split(model: nnx.Module) -> tuple[nnx.GraphDef, Params]:
  """Module -> (graphdef, params as a pure nested dict)."""
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def merge(graphdef: nnx.GraphDef, params: Params) -> nnx.Module:
  """(graphdef, params) -> module. Cheap; call it inside jitted functions."""
  return nnx.merge(graphdef, params)


def _axes_of(state: nnx.State) -> Params:
  flat = {}
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get("axes")
    if axes is None:
      raise ValueError(f"parameter {'/'.join(map(str, path))} has no logical axes")
    flat[tuple(path)] = tuple(axes)
  return traversals.unflatten_mapping(flat)


def abstract(cfg: ModelConfig, kind: Kind = "lm") -> tuple[nnx.GraphDef, Params, Params]:
  """Shapes before arrays: (graphdef, ShapeDtypeStruct tree, logical-axes tree)."""
  model = nnx.eval_shape(lambda: build(cfg, kind))
  graphdef, state = nnx.split(model)
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
  return graphdef, shapes, _axes_of(state)


def param_shardings(cfg: ModelConfig, mesh: Mesh, kind: Kind = "lm") -> Params:
  """NamedSharding for every parameter, from the one rules table."""
  _, shapes, axes = abstract(cfg, kind)
  return rules_lib.tree_shardings(mesh, axes, shapes)


def count_params(tree: Any) -> int:
  """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def init(cfg: ModelConfig, kind: Kind = "lm", *, seed: int = 0,
         mesh: Mesh | None = None) -> tuple[nnx.GraphDef, Params]:
  """Initialises parameters directly in their shardings.

  ``eval_shape`` the module, derive shardings from the logical axes, then run the
  initialiser under ``jit`` with ``out_shardings``: no parameter ever exists
  unsharded on one device.
  """
  graphdef, shapes, axes = abstract(cfg, kind)
  out_shardings = None if mesh is None else rules_lib.tree_shardings(mesh, axes, shapes)

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def _init(key):
    return split(build(cfg, kind, seed=key))[1]

  return graphdef, _init(jax.random.key(seed))


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens):
  return merge(graphdef, params)(tokens)


def logits(model: nnx.Module, tokens: jax.Array) -> jax.Array:
  """Full causal forward: int32 tokens [b, t] -> float32 logits [b, t, v].

  The reference the sampler is tested against.
  """
  graphdef, params = split(model)
  return _logits(graphdef, params, jnp.asarray(tokens, jnp.int32))
