"""TFDS builders writing ArrayRecord (no TensorFlow): generated records and user JSONL.

Every builder keeps file order (``disable_shuffling=True``), carries a VERSION and the
metadata of ``cai_jax.data.records`` (content hash, sources, provenance), and builds
offline with ``download_and_prepare()``. Use the plain functions:

* ``write_records(name, examples, features, data_dir)``: any generated data set (toy-world
  corpus and prompt sets, each phase's sl_data / pref_data).
* ``build_red_team_prompts(jsonl, data_dir)``: lines ``{"prompt": "..."}`` or
  ``{"text": "\\n\\nHuman: ..."}`` (a conversation ending in a Human turn; a trailing
  empty ``"\\n\\nAssistant:"`` is allowed), optional ``"id"`` and ``"category"``.
* ``build_preference_pairs(jsonl, data_dir)``: lines ``{"chosen": "\\n\\nHuman: ...
  \\n\\nAssistant: ...", "rejected": "..."}`` (the public HH format), optional ``"id"`` and
  a soft label ``"p_chosen"`` (default 1.0). Both must share the prompt (everything before
  the last Assistant turn); the prompt and the two final responses are stored.

Malformed rows raise ``ValueError("{file}:{line}: {what is wrong}")`` before anything is
written; nothing is dropped. Stored conversations are text in the public format
(``dialogue.render``), e.g. ``prompt = "\\n\\nHuman: ..."``; read them with ``parse_hh``.
"""
from __future__ import annotations

import functools
import os
import re
import types
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from cai_jax import paths
from cai_jax.data.conversations import parse_preference_row, parse_prompt_row, read_jsonl
from cai_jax.data.dialogue import Turn
from cai_jax.data.records import (DataSource, build_or_reuse, content_hash, files_hash,
                                  make_metadata, read_records)

__all__ = ["PreferencePairs", "RedTeamPrompts", "build_preference_pairs",
           "build_red_team_prompts", "dialogue_example", "dialogue_features",
           "open_preference_pairs", "preference_features", "prompt_features",
           "read_records", "write_records"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
Splits = Mapping[str, Iterable[Mapping[str, Any]]]


def dialogue_features() -> tfds.features.FeaturesDict:
  """A conversation of any roles: parallel ``roles`` / ``texts`` lists, and an ``id``."""
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(), "roles": tfds.features.Sequence(tfds.features.Text()),
      "texts": tfds.features.Sequence(tfds.features.Text())})


def dialogue_example(turns: Sequence[Turn], id: str = "") -> dict[str, Any]:  # noqa: A002
  """A ``dialogue_features`` example from turns."""
  return {"id": id, "roles": [t.role for t in turns], "texts": [t.text for t in turns]}


def prompt_features() -> tfds.features.FeaturesDict:
  """A prompt: ``id``, ``prompt`` (public-format text ending in a Human turn), ``category``."""
  return tfds.features.FeaturesDict({n: tfds.features.Text() for n in ("id", "prompt",
                                                                       "category")})


def preference_features() -> tfds.features.FeaturesDict:
  """A pair: ``id``, ``prompt``, the ``chosen`` / ``rejected`` responses, ``p_chosen``."""
  feats: dict[str, Any] = {n: tfds.features.Text() for n in ("id", "prompt", "chosen",
                                                             "rejected")}
  feats["p_chosen"] = tfds.features.Scalar(np.float32)
  return tfds.features.FeaturesDict(feats)


class _ListBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes in-memory example lists, one per split, in order."""

  VERSION = tfds.core.Version("1.0.0")
  # No checksums file to look up (nothing is downloaded). TFDS's own look-up imports the
  # `importlib_resources` backport for builders defined in a package, absent here.
  code_path = None

  def __init__(self, *, metadata: tfds.core.MetadataDict, **kwargs):
    self._metadata = metadata
    super().__init__(file_format="array_record", **kwargs)

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _splits(self) -> dict[str, list[dict[str, Any]]]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=(self.__doc__ or "").strip(),
                                 features=self._features(), metadata=self._metadata,
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # no downloads: everything is local
    return {split: self._generate_examples(exs) for split, exs in self._splits().items()}

  def _generate_examples(self, examples):
    yield from enumerate(examples)


class _Records(_ListBuilder, skip_registration=True):
  """Generated records (see ``write_records``)."""

  def __init__(self, *, splits: dict[str, list[dict[str, Any]]],
               features: tfds.features.FeaturesDict, **kwargs):
    self._split_examples, self._feature_spec = splits, features
    super().__init__(**kwargs)

  def _features(self):
    return self._feature_spec

  def _splits(self):
    return self._split_examples


@functools.lru_cache(maxsize=None)
def _records_class(name: str, version: str) -> type[_Records]:
  body = {"name": name, "VERSION": tfds.core.Version(version)}
  return types.new_class(f"Records_{name}", (_Records,), {"skip_registration": True},
                         lambda ns: ns.update(body))


def _as_splits(examples: Splits | Iterable[Mapping[str, Any]]) -> dict[str, list[dict]]:
  if isinstance(examples, Mapping):
    return {str(s): [dict(e) for e in exs] for s, exs in examples.items()}
  return {"train": [dict(e) for e in examples]}


def write_records(name: str, examples: Splits | Iterable[Mapping[str, Any]],
                  features: tfds.features.FeaturesDict | Mapping[str, Any], data_dir: str, *,
                  version: str = "1.0.0", provenance: Mapping[str, Any] | None = None,
                  sources: Sequence[str] = (), overwrite: bool = False
                  ) -> dict[str, DataSource]:
  """Writes a versioned record set ``{data_dir}/{name}/{version}`` (or reuses it).

  The examples are materialised in memory (hashed, then written in order).

  Args:
    name: snake_case data set name, e.g. ``"sl_data"``.
    examples: ``{split: iterable of example dicts}``, or one iterable (split "train").
    features: a ``FeaturesDict`` or a dict of feature connectors; every example must
      have exactly these keys.
    data_dir: the root folder of record sets.
    version: ``"MAJOR.MINOR.PATCH"``.
    provenance: free-form JSON metadata (constitution hash, source checkpoint, gin
      config, ...), stored in ``metadata.json``.
    sources: paths the examples were derived from (recorded, not read).
    overwrite: replace an existing set of this name and version with other content.

  Returns:
    ``{split: data source}``.

  Raises:
    ValueError: on a bad name, an example whose keys differ from the features, an empty
      split, or existing different content without ``overwrite``.
  """
  if not _NAME.match(name):
    raise ValueError(f"record set name {name!r} must be snake_case ([a-z][a-z0-9_]*)")
  if not isinstance(features, tfds.features.FeaturesDict):
    features = tfds.features.FeaturesDict(dict(features))
  splits = _as_splits(examples)
  if not splits:
    raise ValueError(f"record set {name!r}: no splits given")
  keys = set(features.keys())
  for split, exs in splits.items():
    if not exs:
      raise ValueError(f"record set {name!r}: split {split!r} has no examples")
    for i, ex in enumerate(exs):
      if set(ex) != keys:
        raise ValueError(f"record set {name!r}, split {split!r}, example {i}: keys "
                         f"{sorted(ex)} differ from the features {sorted(keys)}")
  digest = content_hash(splits)
  meta = make_metadata(name, version, digest, sources, provenance)
  cls = _records_class(name, str(tfds.core.Version(version)))
  return build_or_reuse(lambda d: cls(splits=splits, features=features, metadata=meta,
                                     data_dir=d), data_dir, digest, overwrite=overwrite)


class _JsonlBuilder(_ListBuilder, skip_registration=True):
  """Builds one split per JSONL file."""

  _PARSE: Callable[[dict], dict[str, Any]]

  def __init__(self, *, sources: Mapping[str, str], provenance: Mapping[str, Any] | None = None,
               **kwargs):
    self._sources = {s: paths.absolute(p) for s, p in sources.items()}
    meta = make_metadata(self.name, str(self.VERSION), files_hash(self._sources),
                         self._sources.values(), provenance)
    super().__init__(metadata=meta, **kwargs)

  def _splits(self):
    parse = type(self)._PARSE
    return {split: read_jsonl(path, parse) for split, path in self._sources.items()}


class RedTeamPrompts(_JsonlBuilder, skip_registration=True):
  """Red-team prompts from user JSONL (``{"prompt"}`` or ``{"text"}``, opt. id/category)."""

  name = "red_team_prompts"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "id, prompt (public-format text), category."}
  _PARSE = staticmethod(parse_prompt_row)

  def _features(self):
    return prompt_features()


class PreferencePairs(_JsonlBuilder, skip_registration=True):
  """Chosen/rejected pairs from user JSONL in the public HH format (opt. id/p_chosen)."""

  name = "preference_pairs"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "id, prompt, chosen, rejected (final responses), p_chosen."}
  _PARSE = staticmethod(parse_preference_row)

  def _features(self):
    return preference_features()


def _build_jsonl(cls: type[_JsonlBuilder], jsonl: str | Mapping[str, str], data_dir: str,
                 provenance: Mapping[str, Any] | None, overwrite: bool) -> dict[str, DataSource]:
  sources = {"train": jsonl} if isinstance(jsonl, (str, os.PathLike)) else dict(jsonl)
  sources = {s: paths.absolute(p) for s, p in sources.items()}
  for path in sources.values():
    if not paths.isfile(path):
      raise FileNotFoundError(f"no JSONL file at {path!r}")
  digest = files_hash(sources)
  make = lambda d: cls(sources=sources, provenance=provenance, data_dir=d)
  return build_or_reuse(make, data_dir, digest, overwrite=overwrite)


def build_red_team_prompts(jsonl: str | Mapping[str, str], data_dir: str, *,
                           provenance: Mapping[str, Any] | None = None,
                           overwrite: bool = False) -> dict[str, DataSource]:
  """Builds ``{data_dir}/red_team_prompts/1.0.0`` from one JSONL file per split.

  Args:
    jsonl: a path (split "train") or ``{split: path}``.
    data_dir: root folder of record sets.
    provenance: free-form JSON metadata to store.
    overwrite: replace an existing set built from other files.

  Returns:
    ``{split: data source}`` of ``prompt_features`` examples.

  Raises:
    ValueError: ``"{file}:{line}: ..."`` on a malformed row; or different existing content.
    FileNotFoundError: if a file is missing.
  """
  return _build_jsonl(RedTeamPrompts, jsonl, data_dir, provenance, overwrite)


def build_preference_pairs(jsonl: str | Mapping[str, str], data_dir: str, *,
                           provenance: Mapping[str, Any] | None = None,
                           overwrite: bool = False) -> dict[str, DataSource]:
  """Builds ``{data_dir}/preference_pairs/1.0.0`` from chosen/rejected JSONL files.

  Args and errors as ``build_red_team_prompts``; examples follow ``preference_features``.
  """
  return _build_jsonl(PreferencePairs, jsonl, data_dir, provenance, overwrite)


def open_preference_pairs(path: str, build_dir: str, split: str = "train") -> DataSource:
  """Preference pairs (``preference_features``) for a program to read.

  Args:
    path: a chosen/rejected JSONL file (built into a record set under ``build_dir``),
      or a record set folder ``DATA_DIR/NAME`` (``build_preference_pairs``, or the
      labeling program's ``pref_data``).
    build_dir: where a JSONL file is built (one folder per file: the set's name is
      fixed, so two different files cannot share a folder).
    split: the split to read from a record set (a JSONL file is built as this split).

  Returns:
    A random-access data source of pair records.
  """
  if path.endswith(".jsonl"):
    return build_preference_pairs({split: path}, build_dir)[split]
  data_dir, name = paths.split(path)
  return read_records(data_dir, name, split=split)
