"""Device meshes over the three axes every program uses: (data, fsdp, tensor).

* ``data``: pure data parallelism (replicated parameters).
* ``fsdp``: data parallelism whose parameters and optimizer state are sharded.
* ``tensor``: tensor (model) parallelism: heads, MLP columns, vocabulary.

All axes are ``AxisType.Auto`` (classic GSPMD propagation); ``jax.make_mesh``
defaults to Explicit axes in jax >= 0.10, which we do not want here.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")

_log = logging.getLogger(__name__)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh with Auto axis types.

  Args:
    data, fsdp, tensor: axis sizes; exactly zero or one of them may be -1,
      meaning "all remaining devices". Without -1, a mesh smaller than the
      device list takes its first devices.
    devices: defaults to ``jax.devices()``.

  Raises:
    ValueError: if the sizes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into {dict(zip(AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if -1 not in (data, fsdp, tensor) and math.prod(sizes) < len(devices):
    devices = devices[:math.prod(sizes)]  # an explicit smaller mesh uses the first devices
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
        f"but {len(devices)} are available")
  # mesh_utils would order devices by physical topology; for CPU and single-slice
  # GPU/TPU this plain reshape is the same order jax.make_mesh uses.
  grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def single_device_mesh() -> Mesh:
  """A 1x1x1 mesh on the first device (for host-side tools and tests)."""
  return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def build_mesh(shape: Sequence[int]) -> Mesh:
  """``make_mesh(*shape)`` for a program's ``mesh_shape`` (data, fsdp, tensor), logged."""
  mesh = make_mesh(*shape)
  _log.info("mesh %s on %d devices", dict(mesh.shape), mesh.size)
  return mesh
