"""Loading and validating constitution files (schema: ``constitutions/README.md``).

Validation never stops at the first problem: it walks the whole file and raises one
``ConstitutionError`` listing every problem with its JSON path (``$.critique_principles[3]
.revision_request: missing field``), so a broken file is fixed in one edit, not ten runs.
"""
from __future__ import annotations

import codecs
import difflib
import json
import os
import re
from typing import Any, Mapping

from cai_jax.constitution.schema import (OPTION_LETTERS, SCHEMA_VERSION, ComparisonExemplar,
                                         ComparisonPrinciple, Constitution, ConstitutionError,
                                         CritiquePrinciple, Exemplar, Problem)
from cai_jax.data.dialogue import ROLES, Turn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""Relative constitution paths not found from the working directory are tried from here."""

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_REQUIRED = ("version", "name", "description", "critique_principles",
                 "comparison_principles")
_TOP_OPTIONAL = ("critique_exemplars", "comparison_exemplars")
# Role sequences, one letter per role, checked with a regular expression.
_LETTER = {"Human": "H", "Assistant": "A", "CritiqueRequest": "Q", "Critique": "C",
           "RevisionRequest": "R", "Revision": "V"}
_CRITIQUE_EXEMPLAR_ROLES = re.compile(r"^(HA)+(QCRV)+$")
_CONVERSATION_ROLES = re.compile(r"^(HA)*H$")


class _DupKeyDict(dict):
  """A JSON object that remembers keys given more than once (JSON allows it; we do not)."""

  duplicates: tuple[str, ...] = ()


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _DupKeyDict:
  out = _DupKeyDict()
  dups = []
  for key, value in pairs:
    if key in out:
      dups.append(key)
    out[key] = value
  out.duplicates = tuple(dups)
  return out


def resolve_constitution_path(path: str | os.PathLike) -> str:
  """Finds a constitution file: as given (absolute or from the cwd), else from the repo root.

  So the gin binding ``generate_sl.constitution_path = "constitutions/toy.json"`` works
  from any working directory.

  Raises:
    FileNotFoundError: if neither location holds the file.
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    return os.path.abspath(path)
  candidate = os.path.join(REPO_ROOT, path)
  if not os.path.isabs(path) and os.path.isfile(candidate):
    return candidate
  tried = [os.path.abspath(path)] + ([candidate] if not os.path.isabs(path) else [])
  raise FileNotFoundError(f"no constitution file {path!r}; tried {', '.join(tried)}")


def load_constitution(path: str | os.PathLike) -> Constitution:
  """Reads and validates a constitution JSON file.

  Args:
    path: the file; a relative path is looked up from the cwd, then from the repo root.

  Returns:
    The validated constitution (its ``source`` is the resolved path).

  Raises:
    FileNotFoundError: if the file does not exist.
    ConstitutionError: if it is not UTF-8 (a leading byte-order mark is skipped) or not
      valid JSON (the problem gives the line and column), or breaks the schema; the
      message lists every problem with its JSON path.
  """
  resolved = resolve_constitution_path(path)
  with open(resolved, "rb") as f:
    raw = f.read()
  bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
  try:
    text = raw[bom:].decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConstitutionError(resolved, [Problem("$", _utf8_problem(raw[bom:], e, bom))]
                            ) from None
  try:
    data = json.loads(text, object_pairs_hook=_pairs_hook)
  except json.JSONDecodeError as e:
    raise ConstitutionError(resolved, [Problem(
        "$", f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})")]) from None
  return parse_constitution(data, source=resolved)


def _utf8_problem(raw: bytes, e: UnicodeDecodeError, skipped: int) -> str:
  """Where the first non-UTF-8 byte is: 1-based line and column (in characters), and its
  offset in the file (``skipped`` bytes were cut off the front of ``raw``)."""
  line_start = raw.rfind(b"\n", 0, e.start) + 1
  line = raw.count(b"\n", 0, e.start) + 1
  column = len(raw[line_start:e.start].decode("utf-8")) + 1
  return (f"not valid utf-8 at line {line}, column {column}: byte 0x{raw[e.start]:02x} "
          f"(file offset {e.start + skipped}): {e.reason}")


def parse_constitution(data: Any, *, source: str = "<data>") -> Constitution:
  """Validates already-decoded JSON data (a dict) and builds the ``Constitution``.

  Raises:
    ConstitutionError: listing every problem with its JSON path.
  """
  checker = _Checker()
  checker.top(data)
  if checker.problems:
    raise ConstitutionError(source, checker.problems)
  return Constitution(
      version=data["version"], name=data["name"], description=data["description"],
      critique_principles=tuple(
          CritiquePrinciple(p["id"], p["critique_request"], p["revision_request"])
          for p in data["critique_principles"]),
      comparison_principles=tuple(
          ComparisonPrinciple(p["id"], p["text"]) for p in data["comparison_principles"]),
      critique_exemplars=tuple(
          Exemplar(e["id"], _turns(e["turns"])) for e in data.get("critique_exemplars", [])),
      comparison_exemplars=tuple(
          ComparisonExemplar(e["id"], _turns(e["conversation"]), e["response_a"],
                             e["response_b"], e["principle"], e["answer"],
                             e.get("reasoning", ""))
          for e in data.get("comparison_exemplars", [])),
      source=source)


def _turns(items: list[Mapping[str, str]]) -> tuple[Turn, ...]:
  return tuple(Turn(t["role"], t["text"]) for t in items)


def _type_name(value: Any) -> str:
  if value is None:
    return "null"
  return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"
          }.get(type(value), "object" if isinstance(value, dict) else type(value).__name__)


class _Checker:
  """Walks decoded JSON and collects ``Problem``s instead of raising."""

  def __init__(self):
    self.problems: list[Problem] = []

  def add(self, path: str, message: str) -> None:
    self.problems.append(Problem(path, message))

  def obj(self, value: Any, path: str, required: tuple[str, ...],
          optional: tuple[str, ...] = ()) -> dict | None:
    """Checks an object's type and field names; returns it if it is an object."""
    if not isinstance(value, dict):
      self.add(path, f"expected an object, got {_type_name(value)}")
      return None
    for key in getattr(value, "duplicates", ()):
      self.add(f"{path}.{key}", "field given more than once")
    allowed = required + optional
    for key in value:
      if key not in allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.add(f"{path}.{key}", f"unknown field{hint}; allowed: {', '.join(allowed)}")
    for key in required:
      if key not in value:
        self.add(f"{path}.{key}", "missing field")
    return value

  def text(self, obj: dict, key: str, path: str, *, allow_empty: bool = False,
           single_line: bool = False) -> str | None:
    """Checks ``obj[key]`` (if present) is a string; non-blank unless ``allow_empty``."""
    if key not in obj:
      return None
    value, where = obj[key], f"{path}.{key}"
    if not isinstance(value, str):
      self.add(where, f"expected a string, got {_type_name(value)}")
      return None
    if not allow_empty and not value.strip():
      self.add(where, "must not be empty")
    elif value != value.strip():
      self.add(where, "must not start or end with whitespace")
    if single_line and "\n" in value:
      self.add(where, "must be a single line (no newline)")
    elif "\n\n" in value:
      self.add(where, "must not contain a blank line ('\\n\\n' separates dialogue turns)")
    return value

  def array(self, obj: dict, key: str, path: str, *, non_empty: bool) -> list | None:
    if key not in obj:
      return None
    value, where = obj[key], f"{path}.{key}"
    if not isinstance(value, list):
      self.add(where, f"expected an array, got {_type_name(value)}")
      return None
    if non_empty and not value:
      self.add(where, "must not be empty")
    return value

  def ids(self, items: list, path: str) -> None:
    """Checks the ``id`` of every object in ``items``: a string, well formed, unique."""
    first: dict[str, int] = {}
    for i, item in enumerate(items):
      if not isinstance(item, dict) or "id" not in item:
        continue
      value, where = item["id"], f"{path}[{i}].id"
      if not isinstance(value, str):
        self.add(where, f"expected a string, got {_type_name(value)}")
      elif not _ID.match(value):
        self.add(where, f"id {value!r} must match {_ID.pattern} (letters, digits, '_.-')")
      elif value in first:
        self.add(where, f"duplicate id {value!r} (first used at {path}[{first[value]}].id)")
      else:
        first[value] = i

  def top(self, data: Any) -> None:
    data = self.obj(data, "$", _TOP_REQUIRED, _TOP_OPTIONAL)
    if data is None:
      return
    if "version" in data:
      version = data["version"]
      if type(version) is not int:  # pylint: disable=unidiomatic-typecheck  (bool is an int)
        self.add("$.version", f"expected an integer, got {_type_name(version)}")
      elif version != SCHEMA_VERSION:
        self.add("$.version", f"unsupported version {version}; this code reads version "
                 f"{SCHEMA_VERSION}")
    self.text(data, "name", "$", single_line=True)
    self.text(data, "description", "$")
    sections = (
        ("critique_principles", True, self.critique_principle),
        ("comparison_principles", True, self.comparison_principle),
        ("critique_exemplars", False, self.critique_exemplar),
        ("comparison_exemplars", False, self.comparison_exemplar),
    )
    for key, non_empty, check_item in sections:
      items = self.array(data, key, "$", non_empty=non_empty)
      if items is None:
        continue
      for i, item in enumerate(items):
        check_item(item, f"$.{key}[{i}]")
      self.ids(items, f"$.{key}")

  def critique_principle(self, item: Any, path: str) -> None:
    item = self.obj(item, path, ("id", "critique_request", "revision_request"))
    if item is not None:
      self.text(item, "critique_request", path, single_line=True)
      self.text(item, "revision_request", path, single_line=True)

  def comparison_principle(self, item: Any, path: str) -> None:
    item = self.obj(item, path, ("id", "text"))
    if item is not None:
      self.text(item, "text", path, single_line=True)

  def critique_exemplar(self, item: Any, path: str) -> None:
    item = self.obj(item, path, ("id", "turns"))
    if item is not None:
      self.turns(item, "turns", path, _CRITIQUE_EXEMPLAR_ROLES,
                 "a Human/Assistant dialogue ending with an Assistant turn, then one or more "
                 "rounds of CritiqueRequest, Critique, RevisionRequest, Revision")

  def comparison_exemplar(self, item: Any, path: str) -> None:
    item = self.obj(item, path, ("id", "conversation", "response_a", "response_b",
                                 "principle", "answer"), ("reasoning",))
    if item is None:
      return
    self.turns(item, "conversation", path, _CONVERSATION_ROLES,
               "a Human/Assistant dialogue ending with a Human turn")
    for key in ("response_a", "response_b", "principle"):
      self.text(item, key, path)
    self.text(item, "reasoning", path, allow_empty=True)
    answer = self.text(item, "answer", path)
    if answer is not None and answer not in OPTION_LETTERS:
      self.add(f"{path}.answer", f"must be one of {OPTION_LETTERS}, got {answer!r}")

  def turns(self, obj: dict, key: str, path: str, pattern: re.Pattern, shape: str) -> None:
    """Checks a list of ``{"role", "text"}`` turns and the order of their roles."""
    items = self.array(obj, key, path, non_empty=True)
    if not items:
      return
    letters = []
    for i, turn in enumerate(items):
      where = f"{path}.{key}[{i}]"
      turn = self.obj(turn, where, ("role", "text"))
      if turn is None:
        return
      self.text(turn, "text", where)
      role = self.text(turn, "role", where, single_line=True)
      if role is None:
        return
      if role not in ROLES:
        self.add(f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return
      letters.append(_LETTER[role])
    if not pattern.match("".join(letters)):
      roles = ", ".join(t["role"] for t in items)
      self.add(f"{path}.{key}", f"roles must form {shape}; got {roles}")
