"""One path library for every path of a run: local paths and URLs (``gs://...``) alike.

A local path goes through ``os``/``open`` exactly as before; a URL-like path
(``scheme://...``) goes through ``etils.epath`` (the library Orbax and TFDS use), so a
``--workdir=gs://bucket/run`` stays a bucket path instead of becoming a local
``<cwd>/gs:/bucket/run`` folder. Functions take and return ``str`` paths.

Atomic writes (``write_atomic``): locally, to a temporary name in the same folder
(unique across processes and hosts), flushed and fsync'ed, then renamed over the final
name; on an object store a single object write is already all-or-nothing (readers see
the old object or the new one), so the final name is written directly.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import socket
import uuid
from typing import IO, Iterator

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_local(path: str | os.PathLike) -> bool:
  """False for a URL-like path (``gs://bucket/x``), True for a local one."""
  return _URL.match(os.fspath(path)) is None


def _epath(path: str):
  from etils import epath   # imported on first remote use only
  return epath.Path(path)


# The URL roots relative paths are looked up in (innermost last): a pipeline whose root is
# a URL cannot make it the cwd, so it makes it the first place a relative path is found.
_ROOTS: list[str] = []


@contextlib.contextmanager
def relative_root(url: str):
  """Within the block, a relative path that names something under ``url`` (a URL) means
  that (``absolute('sft/model')`` -> ``url/sft/model``); other relative paths stay
  relative to the cwd."""
  if is_local(url):
    raise ValueError(f"relative_root takes a URL, got {url!r} (chdir to a local folder)")
  _ROOTS.append(url.rstrip("/"))
  try:
    yield
  finally:
    _ROOTS.pop()


def absolute(path: str | os.PathLike) -> str:
  """A local path with ``~`` expanded, made absolute; a URL unchanged (trailing ``/``
  dropped). Inside ``relative_root(url)``, a relative path that exists under ``url`` is
  joined to it."""
  path = os.fspath(path)
  if not is_local(path):
    return path.rstrip("/") if not path.endswith("://") else path
  path = os.path.expanduser(path)
  if _ROOTS and not os.path.isabs(path):
    candidate = join(_ROOTS[-1], path)
    if exists(candidate):
      return candidate
  return os.path.abspath(path)


def _at(path: str | os.PathLike) -> str:
  """``path`` for reading: inside ``relative_root``, a relative path found under the root
  is that URL."""
  path = os.fspath(path)
  if _ROOTS and is_local(path) and not os.path.isabs(path):
    return absolute(path)
  return path


def join(path: str | os.PathLike, *parts: str) -> str:
  """``os.path.join`` locally, ``/``-joining for a URL."""
  path = os.fspath(path)
  return os.path.join(path, *parts) if is_local(path) else posixpath.join(path, *parts)


def dirname(path: str) -> str:
  return os.path.dirname(path) if is_local(path) else posixpath.dirname(path)


def basename(path: str) -> str:
  return os.path.basename(path) if is_local(path) else posixpath.basename(path.rstrip("/"))


def split(path: str) -> tuple[str, str]:
  """``(folder, name)`` of a normalised path (``os.path.split(os.path.normpath(p))``
  locally; a URL's trailing ``/`` is dropped)."""
  if is_local(path):
    return os.path.split(os.path.normpath(path))
  return posixpath.split(path.rstrip("/"))


def split_url(path: str) -> tuple[str, str]:
  """``('gs://', 'bucket/x')`` for a URL, ``('', path)`` for a local path."""
  m = _URL.match(path)
  return (m.group(0), path[m.end():]) if m else ("", path)


def relpath(path: str, start: str) -> str:
  """``path`` relative to ``start`` (both local, or both URLs of one scheme)."""
  if is_local(path) and is_local(start):
    return os.path.relpath(path, start)
  (s1, p1), (s2, p2) = split_url(path), split_url(start)
  if s1 != s2:
    return path
  return posixpath.relpath("/" + p1, "/" + p2)


def exists(path: str) -> bool:
  path = _at(path)
  return os.path.exists(path) if is_local(path) else _epath(path).exists()


def isdir(path: str) -> bool:
  path = _at(path)
  return os.path.isdir(path) if is_local(path) else _epath(path).is_dir()


def isfile(path: str) -> bool:
  path = _at(path)
  if is_local(path):
    return os.path.isfile(path)
  p = _epath(path)
  return p.exists() and not p.is_dir()


def getsize(path: str) -> int:
  path = _at(path)
  return os.path.getsize(path) if is_local(path) else _epath(path).stat().length


def makedirs(path: str) -> None:
  """Creates ``path`` and its parents (no error if it exists)."""
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    _epath(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names in the folder ``path``."""
  path = _at(path)
  if is_local(path):
    return os.listdir(path)
  return [posixpath.basename(str(p).rstrip("/")) for p in _epath(path).iterdir()]


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
  """``os.walk`` (top-down; pruning ``dirs`` in place works) for both kinds of path."""
  path = _at(path)
  if is_local(path):
    yield from os.walk(path)
    return
  if not isdir(path):
    return
  names = listdir(path)
  dirs = [n for n in names if isdir(join(path, n))]
  files = [n for n in names if n not in dirs]
  yield path, dirs, files
  for d in dirs:
    yield from walk(join(path, d))


def glob(path: str, pattern: str) -> list[str]:
  """Paths in the folder ``path`` matching ``pattern`` (sorted)."""
  path = _at(path)
  if is_local(path):
    import glob as glob_lib
    return sorted(glob_lib.glob(os.path.join(path, pattern)))
  return sorted(os.fspath(p) for p in _epath(path).glob(pattern))


def open(path: str, mode: str = "r") -> IO:   # pylint: disable=redefined-builtin
  """Opens a file (text modes in UTF-8)."""
  path = _at(path) if "r" in mode else path
  if is_local(path):
    import builtins
    return builtins.open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
  return _epath(path).open(mode)


def read_text(path: str) -> str:
  with open(path) as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def remove(path: str, missing_ok: bool = False) -> None:
  """Removes a file."""
  try:
    os.remove(path) if is_local(path) else _epath(path).unlink()
  except FileNotFoundError:
    if not missing_ok:
      raise


def rmtree(path: str, missing_ok: bool = False) -> None:
  """Removes a folder and its contents."""
  if is_local(path):
    if missing_ok and not os.path.lexists(path):
      return
    shutil.rmtree(path)
  else:
    _epath(path).rmtree(missing_ok=missing_ok)


def replace(src: str, dst: str) -> None:
  """Moves ``src`` over ``dst`` (atomic locally; a copy and a delete on object stores,
  where a folder ``src`` is copied file by file over a removed ``dst``)."""
  if is_local(src) and is_local(dst):
    os.replace(src, dst)
  elif isdir(src):
    rmtree(dst, missing_ok=True)
    copytree(src, dst)
    rmtree(src)
  elif not is_local(src) and not is_local(dst):
    _epath(src).replace(dst)
  else:
    copy(src, dst)
    remove(src)


def copy(src: str, dst: str) -> None:
  """Copies the file ``src`` to ``dst`` (either may be local or a URL)."""
  if is_local(src) and is_local(dst):
    shutil.copy(src, dst)
    return
  with open(src, "rb") as fin, open(dst, "wb") as fout:
    shutil.copyfileobj(fin, fout)


def copytree(src: str, dst: str) -> None:
  """Copies the folder ``src`` to ``dst``, which must not exist (either may be local or
  a URL; ``shutil.copytree`` when both are local)."""
  if is_local(src) and is_local(dst):
    shutil.copytree(src, dst)
    return
  if exists(dst):
    raise FileExistsError(f"copytree: {dst} exists")
  for root, _, files in walk(src):
    rel = relpath(root, src)
    target = dst if rel == "." else join(dst, rel)
    makedirs(target)
    for name in files:
      copy(join(root, name), join(target, name))


def unique_token() -> str:
  """A token unique across processes and hosts (host, pid, random)."""
  return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temp_name(path: str) -> str:
  """A temporary name next to ``path``, unique across processes and hosts; it ends in
  ``.tmp`` (what ``run.runner.clean_temporaries`` removes after a killed run)."""
  return f"{path}.{unique_token()}.tmp"


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes ``data`` to ``path`` all-or-nothing (module docstring); creates the folder."""
  mode = "wb" if isinstance(data, bytes) else "w"
  if not is_local(path):
    makedirs(dirname(path))
    with open(path, mode) as f:
      f.write(data)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = temp_name(path)
  try:
    with open(tmp, mode) as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
