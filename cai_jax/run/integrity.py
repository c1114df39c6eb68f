"""Integrity of saved arrays: a checksum manifest per folder, checked before loading.

``write_manifest(folder)`` records the size and sha256 of every file under ``folder``
in ``folder/manifest.json`` (written last, atomically); ``verify_manifest(folder)``
re-hashes them and raises ``CorruptArtifactError`` naming the first file that is
missing, truncated or changed, before any reader (Orbax, TensorStore) sees it.
``check_finite`` refuses parameters holding NaN or inf after a restore.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from cai_jax import paths
from cai_jax.run.identity import sha256_of_file

MANIFEST = "manifest.json"


class CorruptArtifactError(ValueError):
  """A saved file is missing, truncated, changed, or holds non-finite values."""


def _listing(folder: str) -> list[str]:
  out = []
  for root, dirs, files in paths.walk(folder):
    dirs.sort()
    for name in sorted(files):
      rel = paths.relpath(paths.join(root, name), folder)
      if rel != MANIFEST and not name.endswith(".tmp"):
        out.append(rel)
  return out


def write_manifest(folder: str, *, under: str = "") -> str:
  """Writes ``folder/manifest.json`` for the files under ``folder/under``; returns it."""
  from cai_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  base = paths.join(folder, under) if under else folder
  files = {os.path.join(under, rel) if under else rel: {
      "size": paths.getsize(paths.join(base, rel)),
      "sha256": sha256_of_file(paths.join(base, rel))} for rel in _listing(base)}
  path = paths.join(folder, MANIFEST)
  workdir_lib.write_json(path, {"files": files})
  return path


def has_manifest(folder: str) -> bool:
  return paths.isfile(paths.join(folder, MANIFEST))


def verify_manifest(folder: str) -> None:
  """Checks every file listed in ``folder/manifest.json``.

  Raises:
    CorruptArtifactError: a listed file is missing, has another size or another hash,
      or the manifest itself is unreadable.
  """
  path = paths.join(folder, MANIFEST)
  try:
    with paths.open(path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptArtifactError(f"{path}: unreadable checksum manifest ({e})") from None
  for rel, want in sorted(files.items()):
    file = paths.join(folder, rel)
    if not paths.isfile(file):
      raise CorruptArtifactError(f"{file} is missing (listed in {path})")
    size = paths.getsize(file)
    if size != want["size"]:
      raise CorruptArtifactError(f"{file} has {size} bytes, {want['size']} were written "
                                 "(truncated or overwritten)")
    if sha256_of_file(file) != want["sha256"]:
      raise CorruptArtifactError(f"{file} does not match its checksum in {path} (the file "
                                 "was corrupted or changed after it was written)")


def check_finite(tree: Any, what: str) -> None:
  """Raises ``CorruptArtifactError`` if any floating leaf of ``tree`` holds NaN or inf."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  floats = [(p, x) for p, x in leaves if hasattr(x, "dtype")
            and jnp.issubdtype(x.dtype, jnp.floating)]
  if not floats:
    return
  flags = jax.device_get([jnp.all(jnp.isfinite(x)) for _, x in floats])
  bad = [jax.tree_util.keystr(p) for (p, _), ok in zip(floats, flags) if not bool(ok)]
  if bad:
    raise CorruptArtifactError(f"{what}: non-finite values (NaN or inf) in "
                               f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
