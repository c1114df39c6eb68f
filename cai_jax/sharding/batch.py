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
  (data x fsdp); this process holds its own rows (``make_array_from_process_local_data``).

  Raises:
    ValueError: if ``batch_size`` is not divisible by the data x fsdp mesh size.
  """
  check_batch_divides(mesh, batch_size)

  def put(batch: dict) -> dict:
    out = {}
    for k, v in batch.items():
      v = np.asarray(v)
      sh = named_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1))
      out[k] = jax.make_array_from_process_local_data(sh, v)
    return out

  return put
