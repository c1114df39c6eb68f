"""A small Orbax wrapper: save and restore a train state with JSON metadata.

Each checkpoint step is a folder ``<directory>/<step>/`` with two items:

- ``state``: the state pytree (a ``TrainState`` or any pytree of global
  ``jax.Array``), written by ``ocp.StandardCheckpointHandler`` (OCDBT layout).
- ``meta``: a JSON dict, written by ``ocp.JsonCheckpointHandler``: the operative
  gin config, the data-iterator state, the step, anything else JSON-serialisable.

Every finished step gets a checksum manifest (``run.integrity``), verified before a
restore; a restored state holding NaN or inf is refused.

Policy, all explicit in the constructor: keep the newest ``max_to_keep`` steps,
save only steps that are multiples of ``save_interval_steps`` (unless forced), and
write asynchronously. An async ``save`` copies the arrays to the host before it
returns, so the caller may donate or update the state right away; reads
(``restore*``) wait for pending writes first.

Restoring always goes into an abstract target (a pytree of ``jax.ShapeDtypeStruct``
carrying ``sharding=``): the arrays come back with the TARGET's shardings, so a
checkpoint written on one mesh can be read on another mesh, on one device, or in a
fresh process with a different device count. Build targets with ``abstract_like``
(from concrete arrays) or ``abstract_with_shardings`` (from ``jax.eval_shape``
output plus shardings); ``cai_jax.train.state.abstract_state`` does the latter for
a ``TrainState``.

Example::

  with Checkpointer(workdir + "/checkpoints", max_to_keep=2) as ckpt:
    ckpt.save(step, state, metadata={"step": step, "gin": gin.operative_config_str()})
    ...
    state, meta = ckpt.restore(abstract_like(state))
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from cai_jax import paths
from cai_jax.run import integrity

_STATE = "state"
_META = "meta"


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of concrete arrays.

  ``jax.Array`` leaves keep their own sharding; ``ShapeDtypeStruct`` leaves are
  returned unchanged; other array-likes (numpy arrays, Python scalars) get no
  sharding, so ``Checkpointer.restore`` rejects them until one is given.

  Args:
    tree: a pytree of arrays, e.g. the live train state.

  Returns:
    A pytree of the same structure whose leaves are ``jax.ShapeDtypeStruct``.
  """

  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    sharding = x.sharding if isinstance(x, jax.Array) else None
    return jax.ShapeDtypeStruct(jax.numpy.shape(x), jax.numpy.result_type(x), sharding=sharding)

  return jax.tree.map(one, tree)


def abstract_with_shardings(shapes: Any, shardings: Any) -> Any:
  """Attaches shardings to a pytree of shapes (e.g. the output of ``jax.eval_shape``).

  Args:
    shapes: pytree whose leaves have ``.shape`` and ``.dtype`` (ShapeDtypeStructs
      or arrays).
    shardings: a single ``jax.sharding.Sharding`` applied to every leaf (e.g.
      ``SingleDeviceSharding(jax.devices()[0])`` to restore on one device), or a
      pytree of shardings with the same structure as ``shapes`` (or a prefix of it).

  Returns:
    A pytree of ``jax.ShapeDtypeStruct`` carrying the given shardings.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shardings), shapes)
  is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
  return jax.tree.map(lambda sh, s: jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh), s),
                      shardings, shapes, is_leaf=is_sharding)


class Checkpointer:
  """Step-indexed checkpoints of a state pytree plus a JSON metadata dict.

  Args:
    directory: the checkpoint folder (created if missing). Local paths are made
      absolute; URLs such as ``gs://...`` are passed through.
    max_to_keep: keep only the newest this many steps (None: keep all).
    save_interval_steps: ``save`` writes only steps divisible by this (unless
      ``force``).
    async_save: write in a background thread (``save`` returns after the
      device-to-host copy). Call ``wait()`` or ``close()`` before exiting.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True):
    directory = paths.absolute(directory)   # a URL (gs://...) is passed to Orbax as is
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    self.directory = directory
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           save_interval_steps=save_interval_steps,
                                           enable_async_checkpointing=async_save, create=True)
    # Registering the handlers up front lets a fresh process read existing steps
    # (without them, item metadata is None and restores fail).
    self._manager = ocp.CheckpointManager(
        directory, options=options,
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _META: ocp.JsonCheckpointHandler()})
    self._closed = False

  def save(self, step: int, state: Any, *, metadata: dict | None = None,
           force: bool = False) -> bool:
    """Saves ``state`` and ``metadata`` as checkpoint ``step``.

    Values are not checked (no NaN guard here: the training loop owns that).

    Args:
      step: the step number (the folder name).
      state: pytree of global ``jax.Array`` (e.g. a ``TrainState``). In a
        multi-process run every leaf, including scalars such as ``step``, must be a
        global array (e.g. ``device_put`` with a replicated ``NamedSharding``).
      metadata: JSON-serialisable dict (bytes must be encoded by the caller, e.g.
        base64). Stored as is; None stores ``{}``.
      force: save even if ``step`` is not a multiple of ``save_interval_steps``.

    Returns:
      True if a save was started; False if skipped (without ``force``: ``step`` is
      not a multiple of ``save_interval_steps``, or not newer than the latest step).

    Raises:
      TypeError: ``metadata`` is not JSON-serialisable (checked before writing).
      ValueError: with ``force``, the step already exists (Orbax's
        ``StepAlreadyExistsError``).
    """
    meta = {} if metadata is None else dict(metadata)
    try:
      json.dumps(meta)
    except (TypeError, ValueError) as e:
      raise TypeError(f"checkpoint metadata must be JSON-serialisable: {e}") from e
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                 _META: ocp.args.JsonSave(meta)})
    self._seal()
    return bool(self._manager.save(int(step), args=args, force=force))

  def _seal(self) -> None:
    """Writes the checksum manifest of every finished step that has none (waits for a
    pending save first; by the next save it has long finished)."""
    self._manager.wait_until_finished()
    if jax.process_index() != 0 or not paths.is_local(self.directory):
      return   # remote: hashing would read the whole checkpoint back over the network
    for step in self._manager.all_steps():
      folder = paths.join(self.directory, str(step))
      if paths.isdir(folder) and not integrity.has_manifest(folder):
        integrity.write_manifest(folder)

  def restore(self, abstract_state: Any, *, step: int | None = None) -> tuple[Any, dict]:
    """Restores a checkpoint into the shardings of ``abstract_state``.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with ``sharding=`` set on
        every leaf (see ``abstract_like`` / ``abstract_with_shardings``); concrete
        ``jax.Array`` leaves are accepted and their shardings used. Its structure
        and types (e.g. a ``TrainState``, optax named tuples, int dict keys) are
        those of the result.
      step: which step; default the latest.

    Returns:
      (state, metadata dict).

    Raises:
      FileNotFoundError: no checkpoint (or not that step) in the directory.
      ValueError: a target leaf has no sharding.
    """
    step = self._resolve_step(step)
    target = abstract_like(abstract_state)
    missing = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_leaves_with_path(target)
               if leaf.sharding is None]
    if missing:
      raise ValueError("every leaf of the restore target needs a sharding (use "
                       f"abstract_with_shardings); missing for: {', '.join(missing[:8])}"
                       + (" ..." if len(missing) > 8 else ""))
    folder = paths.join(self.directory, str(step))
    if integrity.has_manifest(folder):
      integrity.verify_manifest(folder)
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target),
                                 _META: ocp.args.JsonRestore()})
    restored = self._manager.restore(step, args=args)
    integrity.check_finite(restored[_STATE], f"checkpoint {folder}")
    return restored[_STATE], dict(restored[_META] or {})

  def restore_metadata(self, step: int | None = None) -> dict:
    """The JSON metadata of ``step`` (default: the latest), without reading arrays."""
    step = self._resolve_step(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{_META: ocp.args.JsonRestore()}))
    return dict(restored[_META] or {})

  def latest_step(self) -> int | None:
    """The newest saved step (including one still being written), or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All saved steps, ascending."""
    return sorted(int(s) for s in self._manager.all_steps())

  def wait(self) -> None:
    """Blocks until pending async saves are written (re-raises their errors) and their
    checksum manifests are written."""
    self._seal()

  def close(self) -> None:
    """Waits for pending saves and releases the manager (idempotent)."""
    if not self._closed:
      self._closed = True
      self._seal()
      self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _resolve_step(self, step: int | None) -> int:
    self.wait()
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if step is None:
      return steps[-1]
    if int(step) not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"available steps: {steps}")
    return int(step)
