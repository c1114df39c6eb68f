"""THE table that maps logical axis names to mesh axes.

Parameters and activations are annotated with logical names from a small fixed
vocabulary. This module is the only place that says which mesh axes each name is
sharded over. A name without a rule is an error, never a silent replication.
``None`` inside an axes tuple means "this dimension is never sharded".
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
RULES: Mapping[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),   # examples are split over both data axes
    "length": None,              # sequence positions
    "embed": "fsdp",             # model width: FSDP shards parameters over it
    "heads": "tensor",           # query heads
    "kv_heads": "tensor",        # key/value heads (GQA)
    "kv": None,                  # per-head feature dimension
    "mlp": "tensor",             # SwiGLU hidden width
    "vocab": "tensor",           # vocabulary (embedding rows, logits)
}

Axes = Sequence[str | None]


def logical_to_spec(axes: Axes, rules: Mapping[str, Any] = RULES) -> P:
  """Converts logical axis names to a PartitionSpec.

  Raises:
    KeyError: if a name has no rule.
    ValueError: if two dimensions would use the same mesh axis.
  """
  spec, used = [], set()
  for name in axes:
    if name is None:
      spec.append(None)
      continue
    if name not in rules:
      raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
    mesh_axes = rules[name]
    flat = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    if used & set(flat):
      raise ValueError(f"logical axes {tuple(axes)} map mesh axes {flat} twice")
    used |= set(flat)
    spec.append(mesh_axes)
  return P(*spec)


def named_sharding(mesh: Mesh, axes: Axes, shape: Sequence[int] | None = None,
                   rules: Mapping[str, Any] = RULES) -> NamedSharding:
  """NamedSharding for logical ``axes``; checks divisibility when ``shape`` is given."""
  spec = logical_to_spec(axes, rules)
  if shape is not None:
    if len(shape) != len(axes):
      raise ValueError(f"axes {tuple(axes)} do not match shape {tuple(shape)}")
    for dim, name, mesh_axes in zip(shape, axes, spec):
      if mesh_axes is None:
        continue
      flat = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
      n = 1
      for a in flat:
        n *= mesh.shape[a]
      if dim % n:
        raise ValueError(
            f"dimension {name!r} of size {dim} (shape {tuple(shape)}) is not divisible by "
            f"mesh axes {flat} of total size {n}; choose a mesh whose {flat} size divides {dim}")
  return NamedSharding(mesh, spec)


def tree_shardings(mesh: Mesh, axes_tree: Any, shapes_tree: Any,
                   rules: Mapping[str, Any] = RULES) -> Any:
  """Maps a tree of logical-axes tuples (and matching shapes) to NamedShardings."""
  is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
  return jax.tree.map(lambda a, s: named_sharding(mesh, a, s.shape, rules),
                      axes_tree, shapes_tree, is_leaf=is_axes)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
  """``with_sharding_constraint`` by logical names; a no-op when no mesh is set.

  Programs enter ``jax.set_mesh(mesh)``; library code and tests that run without a
  mesh get plain single-device behaviour.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes))
