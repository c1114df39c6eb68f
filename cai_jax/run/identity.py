"""A run's identity: what defines its result, as canonical JSON and one hash.

``fingerprint`` combines the program's name, its operative arguments (cosmetic ones such
as the logging cadence left out), the content of its inputs (files and folders, hashed)
and the package version. Two runs with the same fingerprint compute the same thing, so a
workdir may resume or skip only into a matching one; ``differences`` names the keys
that differ, for the error message.

Arguments are made canonical by ``canonical``: dataclasses become dicts, a gin reference
to a configurable (``@pm/make_optimizer``) becomes its name and its gin bindings (so
``pm/make_optimizer.learning_rate`` is part of the identity), other callables their
qualified name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
from typing import Any, Iterable, Mapping

import gin

from cai_jax import paths

try:
  VERSION = importlib.metadata.version("cai_jax")
except importlib.metadata.PackageNotFoundError:   # run from a source tree
  VERSION = "unknown"
_BLOCK = 1 << 20
_hash_cache: dict[tuple[str, int, int], str] = {}
# Files of a workdir that never define its content (markers, logs, locks, temporaries).
VOLATILE = ("LOCK", "RUN.json", "DONE", "metrics.jsonl", "config.gin", "operative_config.gin")


def sha256_of_file(path: str) -> str:
  """The sha256 of a file's bytes, cached for the process by (path, size, mtime) (a
  remote file, whose mtime is coarse, is hashed every time)."""
  if paths.is_local(path):
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
  else:
    key = (path, -1, -1)
    _hash_cache.pop(key, None)
  if key not in _hash_cache:
    h = hashlib.sha256()
    with paths.open(path, "rb") as f:
      while chunk := f.read(_BLOCK):
        h.update(chunk)
    _hash_cache[key] = h.hexdigest()
  return _hash_cache[key]


def _volatile(name: str) -> bool:
  return (name in VOLATILE or name.startswith("events.out.tfevents") or name.endswith(".tmp")
          or ".tmp." in name)


def content_id(path: str) -> str:
  """A hash of what a file or folder holds (names and bytes; markers and logs left out).

  A folder with a ``manifest.json`` (saved models, see ``run.integrity``) is identified by
  that manifest, which already hashes its files.

  Raises:
    FileNotFoundError: ``path`` does not exist.
  """
  path = paths.absolute(path)
  if paths.isfile(path):
    return sha256_of_file(path)
  if not paths.isdir(path):
    raise FileNotFoundError(f"{path} does not exist")
  h = hashlib.sha256()
  for rel in sorted(_files(path)):
    h.update(rel.encode() + b"\0" + sha256_of_file(paths.join(path, rel)).encode() + b"\n")
  return h.hexdigest()


def _is_checksum_manifest(path: str) -> bool:
  """A ``run.integrity`` manifest (other programs write files of that name too)."""
  try:
    with paths.open(path) as f:
      return isinstance(json.load(f).get("files"), dict)
  except (OSError, ValueError, AttributeError):
    return False


def _files(folder: str) -> Iterable[str]:
  if _is_checksum_manifest(paths.join(folder, "manifest.json")):
    yield "manifest.json"
    if paths.isfile(paths.join(folder, "model.json")):
      yield "model.json"
    return
  for root, dirs, files in paths.walk(folder):
    dirs[:] = sorted(d for d in dirs if not _volatile(d) and not d.startswith("."))
    for name in files:
      if not _volatile(name):
        yield paths.relpath(paths.join(root, name), folder)


def gin_reference(fn: Any) -> tuple[str, Any, Any] | None:
  """(``scope/name``, the wrapped function, the key for ``gin_bindings``) of a gin
  configurable passed as a value (gin keeps the scope in the wrapper's closure), else
  None."""
  cells = dict(zip(getattr(getattr(fn, "__code__", None), "co_freevars", ()),
                   getattr(fn, "__closure__", None) or ()))
  if "fn_or_cls" not in cells:   # a registered configurable passed as a default value
    try:
      gin.get_bindings(fn)
    except (ValueError, KeyError, TypeError):
      return None
    return getattr(fn, "__name__", repr(fn)), fn, fn
  target = cells["fn_or_cls"].cell_contents
  scope = cells["scope_components"].cell_contents if "scope_components" in cells else []
  name = "/".join(list(scope) + [target.__name__])
  return name, target, name


def gin_bindings(name: Any) -> dict[str, Any]:
  """The gin bindings of a configurable, by ``scope/name`` or the function itself (its
  scope's and the unscoped ones)."""
  try:
    return dict(gin.get_bindings(name))
  except (ValueError, KeyError):
    return {}


def canonical(value: Any, depth: int = 0) -> Any:
  """``value`` as JSON-serialisable data that identifies it (see the module docstring)."""
  if depth > 8:
    return repr(value)
  if value is None or isinstance(value, (bool, int, str)):
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else str(value)
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: canonical(getattr(value, f.name), depth + 1)
            for f in dataclasses.fields(value)}
  if isinstance(value, Mapping):
    return {str(k): canonical(v, depth + 1) for k, v in sorted(value.items(), key=str)}
  if isinstance(value, (list, tuple)):
    return [canonical(v, depth + 1) for v in value]
  if callable(value):
    ref = gin_reference(value)
    if ref is not None:
      bindings = gin_bindings(ref[2])
      return {"@": ref[0], **{k: canonical(v, depth + 1) for k, v in sorted(bindings.items())}}
    return "@" + getattr(value, "__module__", "?") + "." + getattr(
        value, "__qualname__", type(value).__name__)
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    return canonical(value.item(), depth + 1)
  return repr(value)


def fingerprint(program: str, args: Mapping[str, Any], *, inputs: Iterable[str] = (),
                cosmetic: Iterable[str] = ()) -> dict[str, Any]:
  """The identity of a run of ``program`` with ``args`` (see the module docstring).

  Args:
    program: the program's name.
    args: its arguments by name (``workdir`` excluded).
    inputs: names of arguments that are input paths (a str, a list of them, or None):
      their content is hashed in place of the path, so a moved experiment keeps its
      identity and changed data does not. A name ending in ``?`` is an optional input:
      a path that does not exist is recorded as missing instead of refused.
    cosmetic: names of arguments that do not change the result.

  Raises:
    FileNotFoundError: an input path does not exist (named with its argument).
  """
  optional = {k[:-1] for k in inputs if k.endswith("?")}
  inputs, cosmetic = {k.rstrip("?") for k in inputs}, set(cosmetic)
  config: dict[str, Any] = {}
  for key, value in sorted(args.items()):
    if key in cosmetic:
      continue
    if key in inputs and value is not None:
      config[key] = _input_id(program, key, value, key in optional)
    else:
      config[key] = canonical(value)
  ident = {"program": program, "version": VERSION, "config": config}
  ident["hash"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
  return ident


def _input_id(program: str, key: str, value: Any, optional: bool = False) -> Any:
  if isinstance(value, (list, tuple)):
    return [_input_id(program, key, v, optional) for v in value]
  if isinstance(value, Mapping):
    return {str(k): _input_id(program, f"{key}[{k!r}]", v, optional)
            for k, v in sorted(value.items())}
  from cai_jax import workdir as workdir_lib   # pylint: disable=import-outside-toplevel
  path = workdir_lib.resolve_input(str(value))
  try:
    return {"content": content_id(path)}
  except FileNotFoundError:
    if optional:
      return {"missing": str(value)}
    raise FileNotFoundError(f"{program}.{key} {value!r} does not exist (looked for "
                            f"{path})") from None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """The argument names whose values differ between two fingerprints (``version`` and
  ``program`` included when they differ)."""
  keys = [k for k in ("program", "version") if old.get(k) != new.get(k)]
  a, b = old.get("config", {}), new.get("config", {})
  return keys + sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
