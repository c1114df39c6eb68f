"""Work split across the processes of a multi-process JAX job (one process per host).

Training programs run one SPMD program over a mesh of every device of every process.
Generation jobs (SL-CAI chains, AI labels, evaluation answers) are embarrassingly
parallel instead: each process samples its share of the job's shards on a mesh of its
own devices (no collective per decode step, no global arrays read back on the host),
writes the shards it made, and waits at a barrier; then process 0 gathers every shard
into the job's data set. Draws depend on each row's own seed, never on the batch around
it, so the shards are the same whichever process makes them.
"""
from __future__ import annotations

import itertools
import json
import logging
from typing import Any, Sequence, TypeVar

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cai_jax.data.shards import Shards
from cai_jax.sharding.mesh import build_mesh, make_mesh

T = TypeVar("T")
_log = logging.getLogger(__name__)
# Barrier ids must be unique: every process passes the same barriers in the same order.
_BARRIERS = itertools.count()
BARRIER_TIMEOUT_S = 24 * 3600   # a barrier waits for slower processes, not for dead ones


def is_chief() -> bool:
  """True on the process that writes a job's shared outputs (process 0)."""
  return jax.process_index() == 0


def share(items: Sequence[T]) -> list[T]:
  """This process's share of ``items``: every ``process_count()``-th one, from its index
  (all of them in a one-process run)."""
  return list(items[jax.process_index()::jax.process_count()])


def fetch(tree):
  """``jax.device_get`` that also reads arrays spread over several processes' devices (it
  gathers them with a collective: every process must fetch the same arrays in the same
  order, as SPMD code does)."""
  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return multihost_utils.process_allgather(x, tiled=True)
    return x
  return jax.device_get(jax.tree.map(one, tree))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (nothing in a one-process
  run). It goes through JAX's coordination service, not a device collective: a process
  that died makes the others fail once its heartbeats stop (``--heartbeat_timeout``),
  instead of waiting for ever."""
  if jax.process_count() == 1:
    return
  client = _client()
  if client is None:   # not joined through jax.distributed: a device collective
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(f"cai_jax/{name}/{next(_BARRIERS)}", BARRIER_TIMEOUT_S * 1000)


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def allgather_json(name: str, value: Any) -> list[Any]:
  """Every process's ``value`` (JSON-serialisable), in process order: ``[value]`` in a
  one-process run. Goes through the coordination service's key-value store (small
  values: answers, counts), so it needs no shared file system and no device collective;
  a dead process makes the others fail once its heartbeats stop."""
  if jax.process_count() == 1:
    return [value]
  client = _client()
  if client is None:
    raise RuntimeError("allgather_json: a multi-process run not joined through "
                       "jax.distributed.initialize (no coordination service)")
  key = f"cai_jax/gather/{name}/{next(_BARRIERS)}"
  client.key_value_set(f"{key}/{jax.process_index()}", json.dumps(value))
  out = [json.loads(client.blocking_key_value_get(f"{key}/{i}", BARRIER_TIMEOUT_S * 1000))
         for i in range(jax.process_count())]
  barrier(f"{name}:gathered")   # every process has read every value
  client.key_value_delete(f"{key}/{jax.process_index()}")
  return out


def open_shards(directory: str, spec: dict, num_items: int, shard_size: int,
                name: str) -> tuple[Shards, list[int]]:
  """Opens a resumable sharded job on every process: process 0 writes or checks its
  spec, then all list the same unfinished shards before any process writes one.
  Returns (shards, every unfinished shard); take this process's with ``share``."""
  if is_chief():
    shards = Shards.open(directory, spec, num_items, shard_size)
  barrier(f"{name}:spec")
  if not is_chief():
    shards = Shards(directory, num_items, shard_size)   # process 0 checked the spec
  todo = shards.todo()
  barrier(f"{name}:todo")
  return shards, todo


def local_mesh(shape: Sequence[int]) -> Mesh:
  """The (data, fsdp, tensor) mesh of a generation job: over every device in a
  one-process run, over this process's own devices in a multi-process one."""
  if jax.process_count() == 1:
    return build_mesh(shape)
  try:
    mesh = make_mesh(*shape, devices=jax.local_devices())
  except ValueError as e:
    raise ValueError(f"mesh_shape {tuple(shape)}: a generation job's mesh spans one "
                     f"process's {jax.local_device_count()} devices in a multi-process "
                     f"run ({e})") from None
  _log.info("mesh %s on %d devices of process %d", dict(mesh.shape), mesh.size,
            jax.process_index())
  return mesh
