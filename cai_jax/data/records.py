"""Versioned record sets on disk: content hashes, build-or-reuse, read back.

A record set is a TFDS data set in ArrayRecord files at ``{data_dir}/{name}/{version}/``
(``dataset_info.json``, ``features.json``, ``metadata.json`` and one
``{name}-{split}.array_record-*`` file set per split). Its ``metadata.json`` always holds

  ``name``, ``version``: what the set is;
  ``content_hash``: sha256 of what was written (the examples, or the source files);
  ``sources``: absolute paths of the files it was built from (may be empty);
  ``provenance``: free-form JSON given by the writer (constitution hash, source
  checkpoint, gin config, ...).

Building is idempotent: a complete set with the same content hash is reused; one with a
different hash is an error unless ``overwrite=True`` (bump the version to keep both).
Everything reads without TensorFlow (``tfds.builder_from_directory`` + ``as_data_source``).

A ``data_dir`` may be a URL (``gs://bucket/run/records``). ArrayRecord reads and writes
local files, so a set for a bucket is built in a local staging folder and uploaded file by
file with ``dataset_info.json`` last (a set counts as complete only once that file is
there, so a killed upload is never read); a set in a bucket is read from a local copy,
downloaded once into ``$CAI_JAX_RECORDS_CACHE`` (default ``~/.cache/cai_jax/records``)
under a key of its URL and its ``dataset_info.json``/``metadata.json`` (a rebuilt set
gets a fresh copy).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds

from cai_jax import paths as path_lib

_log = logging.getLogger(__name__)

DataSource = Any  # tfds ArrayRecordDataSource: len(), [i], __getitems__
_METADATA_KEYS = ("name", "version", "content_hash", "sources", "provenance")


def _canonical(value: Any) -> Any:
  """JSON-able, type-tagged form of an example value for hashing."""
  if isinstance(value, np.ndarray):
    return {"__nd__": str(value.dtype), "shape": list(value.shape), "v": value.tolist()}
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, bytes):
    return {"__bytes__": value.hex()}
  if isinstance(value, Mapping):
    return {str(k): _canonical(v) for k, v in sorted(value.items())}
  if isinstance(value, (list, tuple)):
    return [_canonical(v) for v in value]
  return value


def content_hash(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
  """sha256 over the splits' names and examples, independent of dict key order."""
  h = hashlib.sha256()
  for split in sorted(splits):
    h.update(json.dumps(split).encode())
    for ex in splits[split]:
      h.update(json.dumps(_canonical(ex), sort_keys=True).encode())
      h.update(b"\n")
  return h.hexdigest()


def _update_with_file(h, path: str) -> None:
  with path_lib.open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)


def sha256_file(path: str) -> str:
  """Hex sha256 of one file's bytes."""
  h = hashlib.sha256()
  _update_with_file(h, path)
  return h.hexdigest()


def files_hash(paths: Mapping[str, str]) -> str:
  """sha256 over ``{split: path}``: split names and file bytes."""
  h = hashlib.sha256()
  for split in sorted(paths):
    h.update(json.dumps(split).encode())
    _update_with_file(h, paths[split])
  return h.hexdigest()


def make_metadata(name: str, version: str, digest: str, sources: Iterable[str] = (),
                  provenance: Mapping[str, Any] | None = None) -> tfds.core.MetadataDict:
  """The metadata every record set carries (see module docstring).

  Raises:
    ValueError: if ``provenance`` is not JSON-serialisable.
  """
  provenance = dict(provenance or {})
  try:
    json.dumps(provenance)
  except TypeError as e:
    raise ValueError(f"record set {name!r}: provenance must be JSON-serialisable: {e}") from None
  return tfds.core.MetadataDict(
      name=name, version=str(version), content_hash=digest,
      sources=[path_lib.absolute(p) for p in sources], provenance=provenance)


def _versions(data_dir: str, name: str) -> list[str]:
  root = path_lib.join(data_dir, name)
  if not path_lib.isdir(root):
    return []
  found = [v for v in path_lib.listdir(root)
           if path_lib.isfile(path_lib.join(root, v, "dataset_info.json"))]
  return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))


def dataset_dir(data_dir: str, name: str, version: str | None = None) -> str:
  """Folder of a complete record set; ``version=None`` picks the highest one.

  Raises:
    FileNotFoundError: if no complete set (or not that version) exists.
  """
  data_dir = path_lib.absolute(data_dir)   # a relative one may be under a URL root
  versions = _versions(data_dir, name)
  if version is None and versions:
    version = versions[-1]
  if version is None or str(version) not in versions:
    raise FileNotFoundError(
        f"no record set {name!r} (version {version or 'any'}) under {data_dir!r}; "
        f"complete versions there: {versions or 'none'}")
  return path_lib.join(data_dir, name, str(version))


def read_metadata(data_dir: str, name: str, version: str | None = None) -> dict[str, Any]:
  """The ``metadata.json`` of a record set (empty dict if it has none)."""
  path = path_lib.join(dataset_dir(data_dir, name, version), "metadata.json")
  if not path_lib.isfile(path):
    return {}
  with path_lib.open(path) as f:
    return json.load(f)


def read_records(data_dir: str, name: str, *, version: str | None = None,
                 split: str | None = None) -> DataSource | dict[str, DataSource]:
  """Opens a record set for random access (no TensorFlow, no builder class needed).

  Args:
    data_dir: the folder holding ``{name}/{version}/``.
    name: the record set's name.
    version: a version string; None picks the highest complete one.
    split: a split (TFDS slicing such as ``"train[:10%]"`` works); None returns all
      splits as a dict.

  Returns:
    One data source (``len``, ``[i]``, ``__getitems__``; text comes back as bytes) or
    ``{split: data source}``.
  """
  folder = dataset_dir(data_dir, name, version)
  if not path_lib.is_local(folder):
    folder = local_copy(folder)
  builder = tfds.builder_from_directory(folder)
  if split is not None:
    return builder.as_data_source(split=split)
  return builder.as_data_source()


def build_or_reuse(make_builder: Callable[[str], tfds.core.DatasetBuilder], data_dir: str,
                   digest: str, *, overwrite: bool = False) -> dict[str, DataSource]:
  """Builds a record set unless an identical one (same content hash) is complete.

  Args:
    make_builder: ``make_builder(data_dir)`` returns a fresh builder
      (``file_format='array_record'``) writing under ``data_dir``, whose ``info.metadata``
      will hold ``content_hash == digest``.
    data_dir: the folder of record sets (local or a URL; module docstring).
    digest: content hash of what the builder would write.
    overwrite: replace a complete set whose content hash differs.

  Returns:
    ``{split: data source}`` of the (new or reused) set.

  Raises:
    ValueError: if a complete set with different content exists and not ``overwrite``.
  """
  data_dir = os.fspath(data_dir)
  if path_lib.is_local(data_dir):
    builder = make_builder(data_dir)
    path = os.fspath(builder.data_dir)
  else:   # the set's folder under the URL, named as TFDS names it locally
    with tempfile.TemporaryDirectory(prefix="cai_jax_names_") as tmp:
      path = path_lib.join(data_dir, os.path.relpath(os.fspath(make_builder(tmp).data_dir),
                                                     tmp))
  if jax.process_index() != 0:   # in a multi-process job, process 0 builds the set
    return _wait_for_set(path, digest)
  if path_lib.isfile(path_lib.join(path, "dataset_info.json")):
    old = _content_hash(path)
    if old == digest:
      _log.info("record set %s is up to date (content %s); reusing it", path, digest[:12])
      return _open(path)
    if not overwrite:
      raise ValueError(
          f"record set {path} exists with different content (hash {str(old)[:12]}, new "
          f"{digest[:12]}); bump the version or pass overwrite=True to replace it")
    _log.warning("replacing record set %s (content %s -> %s)", path, str(old)[:12], digest[:12])
    path_lib.rmtree(path)
  if path_lib.is_local(data_dir):
    make_builder(data_dir).download_and_prepare()
  else:
    _build_and_upload(make_builder, path)
  return _open(path)


def _content_hash(path: str) -> str | None:
  meta = path_lib.join(path, "metadata.json")
  if not path_lib.isfile(meta):
    return None
  with path_lib.open(meta) as f:
    return json.load(f).get("content_hash")


def _open(path: str) -> dict[str, DataSource]:
  """``{split: data source}`` of the complete set in ``path`` (local or a URL)."""
  return tfds.builder_from_directory(path if path_lib.is_local(path)
                                     else local_copy(path)).as_data_source()


def _build_and_upload(make_builder: Callable[[str], tfds.core.DatasetBuilder],
                      target: str) -> None:
  """Builds a set in a local staging folder and uploads it to ``target`` (a URL),
  ``dataset_info.json`` last; the staged copy becomes the local cache of the set."""
  staging = tempfile.mkdtemp(prefix="cai_jax_records_")
  try:
    builder = make_builder(staging)
    builder.download_and_prepare()
    local = os.fspath(builder.data_dir)
    names = sorted(os.listdir(local), key=lambda n: n == "dataset_info.json")
    path_lib.makedirs(target)
    for name in names:   # flat folder (TFDS writes no subfolders in a set)
      path_lib.copy(os.path.join(local, name), path_lib.join(target, name))
    _log.info("record set built locally and uploaded to %s", target)
    cached = _cache_dir(target)
    if not os.path.isdir(cached):
      os.makedirs(os.path.dirname(cached), exist_ok=True)
      os.replace(local, cached)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _cache_dir(url: str) -> str:
  root = os.environ.get("CAI_JAX_RECORDS_CACHE") or os.path.expanduser(
      "~/.cache/cai_jax/records")
  h = hashlib.sha256(url.encode())
  for name in ("dataset_info.json", "metadata.json"):
    if path_lib.isfile(path_lib.join(url, name)):
      h.update(path_lib.read_bytes(path_lib.join(url, name)))
  return os.path.join(root, h.hexdigest()[:24], path_lib.basename(url))


def local_copy(url: str) -> str:
  """A local copy of the complete record set at ``url`` (downloaded on first use)."""
  cached = _cache_dir(url)
  if os.path.isfile(os.path.join(cached, "dataset_info.json")):
    return cached
  tmp = path_lib.temp_name(cached)
  os.makedirs(tmp)
  try:
    for name in path_lib.listdir(url):
      path_lib.copy(path_lib.join(url, name), os.path.join(tmp, name))
    try:
      os.replace(tmp, cached)
    except OSError:   # another process put the same copy there first
      if not os.path.isfile(os.path.join(cached, "dataset_info.json")):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  _log.info("record set %s copied to %s", url, cached)
  return cached


def _wait_for_set(path: str, digest: str, timeout_s: float = 6 * 3600
                  ) -> dict[str, DataSource]:
  """The set that process 0 builds in ``path`` (with content ``digest``), once it is
  complete. If process 0 dies, JAX's coordination service ends this process too."""
  deadline, said = time.monotonic() + timeout_s, False
  while time.monotonic() < deadline:
    if (path_lib.isfile(path_lib.join(path, "dataset_info.json"))
        and _content_hash(path) == digest):
      return _open(path)
    if not said:
      _log.info("waiting for process 0 to build the record set %s", path)
      said = True
    time.sleep(0.5)
  raise TimeoutError(f"process 0 did not build the record set {path} in {timeout_s:.0f} s")


def to_text(value: Any) -> str:
  """A text feature value as ``str`` (TFDS returns bytes)."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _plain(value: Any) -> Any:
  if isinstance(value, bytes):
    return to_text(value)
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


def read_rows(path: str, name: str, split: str | None = None) -> list[dict[str, Any]]:
  """Every row of a record set, text decoded to ``str`` (also inside sequences).

  Args:
    path: the set's folder ``DATA_DIR/NAME``, or a program workdir holding
      ``records/NAME``.
    name: the set's name (to find it inside a workdir).
    split: one split; None: all splits, concatenated in name order.
  """
  path = path_lib.absolute(path)
  if path_lib.isdir(path_lib.join(path, "records", name)):
    path = path_lib.join(path, "records", name)
  data_dir, base = path_lib.split(path)
  found = read_records(data_dir, base, split=split)
  sources = [found] if split is not None else [found[k] for k in sorted(found)]
  return [{k: _plain(v) for k, v in src[i].items()} for src in sources
          for i in range(len(src))]
