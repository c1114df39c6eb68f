"""Conversation files for supervised fine-tuning, and fixed-length batching.

A conversations file is JSONL; each line is one of
  {"turns": [{"role": "Human", "text": "..."}, {"role": "Assistant", "text": "..."}]}
  {"text": "\\n\\nHuman: ...\\n\\nAssistant: ..."}       (the common public format)
Malformed lines raise ``InputError`` (a ``ValueError``) as ``"{path}:{line}: {problem}"``;
nothing is dropped silently. Every reader here counts lines the same way: each ``\\n``
ends one (blank lines included, 1-based), bytes are decoded as UTF-8 (a byte-order mark
at the start of the file is skipped), and a bad byte is reported with its column.

``read_jsonl`` with ``parse_prompt_row`` / ``parse_preference_row`` reads the red-team
prompt and chosen/rejected pair files of ``cai_jax.data.builders`` the same way.
"""
from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import grain
import numpy as np

from cai_jax import paths
from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn, parse_hh, render


class InputError(ValueError):
  """Bad user input, located: ``"{path}:{line}: {problem}"`` (``"{path}: {problem}"`` when
  the problem is the whole file).

  Attributes:
    path: the file read.
    line: the 1-based line number, 0 for the whole file.
    field: the field at fault, when one is known (else None).
    problem: the message without the location.
  """

  def __init__(self, path: str, line: int, problem: str, field: str | None = None):
    self.path, self.line, self.field, self.problem = path, line, field, problem
    super().__init__(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")


class _FieldError(ValueError):
  """A row problem in one field; the reader adds the file and line."""

  def __init__(self, field: str, problem: str):
    self.field = field
    super().__init__(problem)


@contextlib.contextmanager
def _at(path: str, line: int) -> Iterator[None]:
  """Re-raises a ``ValueError`` from the block as an ``InputError`` at ``path:line``."""
  try:
    yield
  except InputError:
    raise
  except ValueError as e:
    raise InputError(path, line, str(e), getattr(e, "field", None)) from None


def _utf8_problem(raw: bytes, e: UnicodeDecodeError, offset: int) -> str:
  column = len(raw[:e.start].decode("utf-8")) + 1
  return (f"not valid utf-8 at column {column}: byte 0x{raw[e.start]:02x} (file offset "
          f"{offset + e.start}): {e.reason}")


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, text without its line end) for every line of a UTF-8 text file.

  Raises:
    InputError: at the first line with bytes that are not UTF-8.
  """
  offset = 0
  with paths.open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
        raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise InputError(path, lineno, _utf8_problem(raw, e, offset)) from None
      offset += len(raw)
      yield lineno, text.rstrip("\r\n")


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def _json_object(line: str) -> dict:
  """One JSONL line, which must hold a JSON object."""
  hint = (" (JSON Lines: one object per line, not one array)"
          if line.lstrip().startswith("[") else "")
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    if "\r" in line:
      hint = " (a lone '\\r' line end? JSONL lines end with '\\n')"
    raise ValueError(f"invalid JSON at column {e.colno}: {e.msg}{hint}") from None
  if not isinstance(obj, dict):
    raise ValueError(f"expected a JSON object, got {_JSON_TYPES.get(type(obj), 'value')}{hint}")
  return obj


def _json_rows(path: str) -> Iterator[tuple[int, dict]]:
  """(line number, object) per non-blank line of a JSONL file; a bad line raises
  ``InputError``."""
  for lineno, line in _lines(path):
    if line.strip():
      with _at(path, lineno):
        obj = _json_object(line)
      yield lineno, obj


def _turns_from_row(row: dict) -> list[Turn]:
  if "turns" in row:
    if not isinstance(row["turns"], list) or not row["turns"]:
      raise _FieldError("turns", "field 'turns' must be a non-empty list")
    turns = []
    for i, t in enumerate(row["turns"]):
      if not isinstance(t, dict) or set(t) - {"role", "text"} or "role" not in t or "text" not in t:
        raise _FieldError(f"turns[{i}]", f"'turns' item {i} must be an object with exactly "
                          "'role' and 'text'")
      if not isinstance(t["text"], str):
        raise _FieldError(f"turns[{i}].text", f"'turns' item {i}: 'text' must be a string")
      try:
        turns.append(Turn(t["role"], t["text"]))
      except ValueError as e:
        raise _FieldError(f"turns[{i}].role", f"'turns' item {i}: {e}") from None
    return turns
  if "text" in row:
    if not isinstance(row["text"], str):
      raise _FieldError("text", "field 'text' must be a string")
    try:
      return parse_hh(row["text"])
    except ValueError as e:
      raise _FieldError("text", f"field 'text': {e}") from None
  raise ValueError(f"expected a 'turns' or a 'text' field (fields: {sorted(row)})")


def read_conversations(path: str) -> list[list[Turn]]:
  """Reads a conversations JSONL file (see module docstring).

  Raises:
    InputError: ``"{path}:{line}: ..."`` for bad UTF-8 or JSON, a line that is not an
      object, a bad field or a conversation without an assistant turn;
      ``"{path}: no conversations"`` for a file without one.
  """
  out = []
  for lineno, row in _json_rows(path):
    with _at(path, lineno):
      turns = _turns_from_row(row)
      if not any(t.is_model for t in turns):
        raise ValueError("no assistant turn to train on")
    out.append(turns)
  if not out:
    raise InputError(path, 0, "no conversations")
  return out


def write_conversations(path: str, conversations: Iterable[Sequence[Turn]]) -> int:
  n = 0
  with paths.open(path, "w") as f:
    for turns in conversations:
      f.write(json.dumps({"turns": [dataclasses.asdict(t) for t in turns]}) + "\n")
      n += 1
  return n


@dataclasses.dataclass(frozen=True)
class TokenArrays:
  """Fixed-length token examples.

  Attributes:
    tokens: [n, seq_len] int32, right-padded with ``pad_id``.
    loss_mask: [n, seq_len] int32, 1 where the token is a training target.
    num_truncated: how many examples were longer than ``seq_len`` and cut.
  """

  tokens: np.ndarray
  loss_mask: np.ndarray
  num_truncated: int


def pad_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int,
                 pad_id: int) -> TokenArrays:
  """Right-pads (ids, loss_mask) pairs to ``seq_len``; longer ones are truncated."""
  n = len(examples)
  tokens = np.full((n, seq_len), pad_id, np.int32)
  mask = np.zeros((n, seq_len), np.int32)
  truncated = 0
  for i, (ids, m) in enumerate(examples):
    if len(ids) != len(m):
      raise ValueError(f"example {i}: {len(ids)} ids but {len(m)} mask entries")
    if len(ids) > seq_len:
      truncated += 1
    k = min(len(ids), seq_len)
    tokens[i, :k] = ids[:k]
    mask[i, :k] = m[:k]
  return TokenArrays(tokens, mask, truncated)


def batch_dataset(arrays: dict[str, np.ndarray], *, batch_size: int, seed: int,
                  shuffle: bool = True) -> grain.IterDataset:
  """An endless, checkpointable batch stream over in-memory example arrays.

  Each epoch is a fresh seeded permutation. The iterator's ``get_state()`` /
  ``set_state()`` give exact resumption.
  """
  n = len(next(iter(arrays.values())))
  if n < batch_size:
    raise ValueError(f"{n} examples cannot fill one batch of {batch_size}")
  rows = [{k: v[i] for k, v in arrays.items()} for i in range(n)]
  ds = grain.MapDataset.source(rows)
  if shuffle:
    ds = ds.seed(seed).shuffle()  # before repeat: a new permutation every epoch
  ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset()


# ------------------------------------------------- prompt and preference-pair files
# Rows for ``cai_jax.data.builders``: red-team prompts ({"prompt": "..."} or {"text":
# "\n\nHuman: ..."}, optional "id"/"category") and chosen/rejected pairs in the public
# HH format (optional "id"/"p_chosen"). Conversations are stored as public-format text.
def read_jsonl(path: str, parse: Callable[[dict], dict[str, Any]]) -> list[dict[str, Any]]:
  """Parses every non-blank line of a JSONL file with ``parse(obj) -> row``.

  Rows have an ``"id"``; a missing or empty one becomes ``"{file stem}:{line}"``.

  Raises:
    InputError: ``"{path}:{line}: ..."`` on bad UTF-8 or JSON, a non-object line, an
      error from ``parse`` or a duplicate id; ``"{path}: no rows"`` on an empty file.
  """
  return _parsed_rows(path, _json_rows(path), parse)


def _parsed_rows(path: str, objects: Iterable[tuple[int, dict]],
                 parse: Callable[[dict], dict[str, Any]]) -> list[dict[str, Any]]:
  """``parse`` applied to (line number, object) pairs; ids defaulted and unique."""
  rows, seen = [], {}
  stem = os.path.splitext(os.path.basename(path))[0]
  for lineno, obj in objects:
    with _at(path, lineno):
      row = parse(obj)
      row["id"] = row.get("id") or f"{stem}:{lineno}"
      if row["id"] in seen:
        raise _FieldError("id", f"duplicate id {row['id']!r} (first on line "
                          f"{seen[row['id']]})")
    seen[row["id"]] = lineno
    rows.append(row)
  if not rows:
    raise InputError(path, 0, "no rows")
  return rows


def _text_field(obj: dict, key: str, *, required: bool = True) -> str | None:
  if key not in obj:
    if required:
      raise _FieldError(key, f"missing field {key!r} (fields: {sorted(obj)})")
    return None
  value = obj[key]
  if key == "id" and isinstance(value, int) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str):
    raise _FieldError(key, f"field {key!r} must be a string, got "
                      f"{_JSON_TYPES.get(type(value), type(value).__name__)}")
  if not value.strip():
    raise _FieldError(key, f"field {key!r} is empty")
  return value


def _conversation(text: str, key: str) -> list[Turn]:
  """Parses public-format text; every turn must have a body."""
  try:
    turns = parse_hh(text)
  except ValueError as e:
    raise _FieldError(key, f"{key!r}: {e}") from None
  if turns and turns[-1].role == ASSISTANT and not turns[-1].text and key == "text":
    turns = turns[:-1]  # an open "\n\nAssistant:" header after a prompt
  if not turns:
    raise _FieldError(key, f"{key!r} has no turns")
  for i, t in enumerate(turns):
    if not t.text:
      raise _FieldError(key, f"{key!r}: turn {i} ({t.role}) has empty text")
  return turns


def _rendered(turns: Sequence[Turn], key: str) -> str:
  text = render(turns)
  if parse_hh(text) != list(turns):
    raise _FieldError(key, f"{key!r}: text contains a '\\n\\nHuman:' or '\\n\\nAssistant:' header")
  return text


def parse_prompt_row(obj: dict) -> dict[str, Any]:
  """A red-team prompt line -> a ``prompt_features`` example (id "" if absent)."""
  if ("prompt" in obj) == ("text" in obj):
    raise ValueError("expected exactly one of the fields 'prompt' and 'text'")
  if "prompt" in obj:
    turns = [Turn(HUMAN, _text_field(obj, "prompt").strip())]
  else:
    turns = _conversation(_text_field(obj, "text"), "text")
    if turns[-1].role != HUMAN:
      raise _FieldError("text", f"'text' must end with a Human turn, not {turns[-1].role}")
  category = _text_field(obj, "category", required=False) or ""
  return {"id": _text_field(obj, "id", required=False) or "",
          "prompt": _rendered(turns, "prompt"), "category": category}


PROMPT_FORMATS = (".jsonl", ".json", ".txt")
"""Prompt file extensions ``read_prompts`` accepts (compared case-insensitively)."""


def read_prompts(path: str) -> list[tuple[str, tuple[Turn, ...]]]:
  """(id, request turns) per prompt of a prompt file, chosen by its extension.

  * ``.jsonl`` / ``.json``: JSON Lines, one object per non-blank line (``parse_prompt_row``:
    ``{"prompt": str}`` or ``{"text": HH dialogue ending with a Human turn}``, optional
    ``id`` and ``category``).
  * ``.txt``: one prompt per non-blank line, whitespace stripped; the id of the prompt on
    line N of ``name.txt`` is ``"name:N"`` (the id a JSONL row without one gets).

  Raises:
    InputError: for another extension (naming the accepted ones), and as ``read_jsonl``
      does for a bad line (``"{path}:{line}: ..."``, bad UTF-8 included).
  """
  ext = os.path.splitext(path)[1].lower()
  if ext == ".txt":
    objects = ((n, {"prompt": line}) for n, line in _lines(path) if line.strip())
  elif ext in PROMPT_FORMATS:
    objects = _json_rows(path)
  else:
    raise InputError(path, 0, f"unsupported prompt file extension {ext or '(none)'!r}; "
                     "accepted: .jsonl or .json (JSON Lines, one object per line), .txt "
                     "(one prompt per line)")
  rows = _parsed_rows(path, objects, parse_prompt_row)
  return [(row["id"], tuple(parse_hh(row["prompt"]))) for row in rows]


def parse_preference_row(obj: dict) -> dict[str, Any]:
  """A chosen/rejected line -> a ``preference_features`` example (id "" if absent).

  Both must be the same prompt followed by an Assistant response, and the two responses
  must differ (a degenerate pair, chosen equal to rejected, is refused).
  """
  prompts, responses = {}, {}
  for key in ("chosen", "rejected"):
    turns = _conversation(_text_field(obj, key), key)
    if turns[-1].role != ASSISTANT:
      raise _FieldError(key, f"{key!r} must end with an Assistant turn, not "
                        f"{turns[-1].role}")
    if len(turns) < 2:
      raise _FieldError(key, f"{key!r} has no prompt before its Assistant response")
    prompts[key], responses[key] = turns[:-1], turns[-1].text
  if prompts["chosen"] != prompts["rejected"]:
    a, b = prompts["chosen"], prompts["rejected"]
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    raise _FieldError("rejected", f"'chosen' and 'rejected' have different prompts ({len(a)} "
                      f"vs {len(b)} turns, first difference at turn {k})")
  if responses["chosen"] == responses["rejected"]:
    raise _FieldError("rejected", "degenerate pair: 'chosen' and 'rejected' are the same "
                      "conversation, so there is no preference to learn")
  p = obj.get("p_chosen", 1.0)
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
    raise _FieldError("p_chosen", f"'p_chosen' must be a number in [0, 1], got {p!r}")
  return {"id": _text_field(obj, "id", required=False) or "",
          "prompt": _rendered(prompts["chosen"], "prompt"), "chosen": responses["chosen"],
          "rejected": responses["rejected"], "p_chosen": np.float32(p)}
