"""Host batches -> global device arrays sharded over the mesh's batch axes."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from cai_jax.sharding.rules import named_sharding


def check_batch_divides(mesh: Mesh, batch_size: int) -> None:
  """Raises ValueError if ``batch_size`` does not divide over the data x fsdp axes."""
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % n:
    raise ValueError(f"batch_size={batch_size} is not divisible by the data*fsdp mesh size {n}")


def batch_putter(mesh: Mesh, batch_size: int) -> Callable[[dict], dict]:
  """Returns ``put(batch) -> batch`` placing every array's leading axis on ``batch``
  (data x fsdp); ``batch`` is the global batch, the same on every process.

  Raises:
    ValueError: if ``batch_size`` is not divisible by the data x fsdp mesh size.
  """
  check_batch_divides(mesh, batch_size)

  def put(batch: dict) -> dict:
    out = {}
    for k, v in batch.items():
      v = np.asarray(v)
      sh = named_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1))
      # Every process holds the same global batch and places the rows its devices own, so
      # N processes train on exactly the batches of one process.
      out[k] = jax.make_array_from_callback(v.shape, sh, lambda idx, v=v: v[idx])
    return out

  return put
