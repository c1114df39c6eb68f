"""Conversation files for supervised fine-tuning, and fixed-length batching.

A conversations file is JSONL; each line is one of
  {"turns": [{"role": "Human", "text": "..."}, {"role": "Assistant", "text": "..."}]}
  {"text": "\\n\\nHuman: ...\\n\\nAssistant: ..."}       (the common public format)
Malformed lines raise ``ValueError`` naming the file, the line and the problem;
nothing is dropped silently.

``read_jsonl`` with ``parse_prompt_row`` / ``parse_preference_row`` reads the red-team
prompt and chosen/rejected pair files of ``cai_jax.data.builders`` the same way.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Sequence

import grain
import numpy as np

from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn, parse_hh, render


def _turns_from_row(row: dict) -> list[Turn]:
  if "turns" in row:
    if not isinstance(row["turns"], list) or not row["turns"]:
      raise ValueError("'turns' must be a non-empty list")
    turns = []
    for i, t in enumerate(row["turns"]):
      if not isinstance(t, dict) or set(t) - {"role", "text"} or "role" not in t or "text" not in t:
        raise ValueError(f"turn {i} must be an object with exactly 'role' and 'text'")
      if not isinstance(t["text"], str):
        raise ValueError(f"turn {i}: 'text' must be a string")
      turns.append(Turn(t["role"], t["text"]))
    return turns
  if "text" in row:
    if not isinstance(row["text"], str):
      raise ValueError("'text' must be a string")
    return parse_hh(row["text"])
  raise ValueError("expected a 'turns' or a 'text' field")


def read_conversations(path: str) -> list[list[Turn]]:
  """Reads a conversations JSONL file (see module docstring)."""
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict):
          raise ValueError("each line must be a JSON object")
        turns = _turns_from_row(row)
      except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}:{lineno}: {e}") from None
      if not any(t.is_model for t in turns):
        raise ValueError(f"{path}:{lineno}: no assistant turn to train on")
      out.append(turns)
  if not out:
    raise ValueError(f"{path}: no conversations")
  return out


def write_conversations(path: str, conversations: Iterable[Sequence[Turn]]) -> int:
  n = 0
  with open(path, "w", encoding="utf-8") as f:
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

  Rows have an ``"id"``; an empty one becomes ``"{file stem}:{line}"``.

  Raises:
    ValueError: ``"{path}:{line}: ..."`` on bad UTF-8 or JSON, a non-object line, an
      error from ``parse`` or a duplicate id; ``"{path}: no rows"`` on an empty file.
  """
  rows, seen = [], {}
  stem = os.path.splitext(os.path.basename(path))[0]
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
        if not line.strip():
          continue
        obj = json.loads(line)
        if not isinstance(obj, dict):
          raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        row = parse(obj)
        row["id"] = row["id"] or f"{stem}:{lineno}"
        if row["id"] in seen:
          raise ValueError(f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
      except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}:{lineno}: {e}") from None
      seen[row["id"]] = lineno
      rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no rows")
  return rows


def _text_field(obj: dict, key: str, *, required: bool = True) -> str | None:
  if key not in obj:
    if required:
      raise ValueError(f"missing field {key!r} (fields: {sorted(obj)})")
    return None
  value = obj[key]
  if key == "id" and isinstance(value, int) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str):
    raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
  if not value.strip():
    raise ValueError(f"field {key!r} is empty")
  return value


def _conversation(text: str, key: str) -> list[Turn]:
  """Parses public-format text; every turn must have a body."""
  try:
    turns = parse_hh(text)
  except ValueError as e:
    raise ValueError(f"{key!r}: {e}") from None
  if turns and turns[-1].role == ASSISTANT and not turns[-1].text and key == "text":
    turns = turns[:-1]  # an open "\n\nAssistant:" header after a prompt
  if not turns:
    raise ValueError(f"{key!r} has no turns")
  for i, t in enumerate(turns):
    if not t.text:
      raise ValueError(f"{key!r}: turn {i} ({t.role}) has empty text")
  return turns


def _rendered(turns: Sequence[Turn], key: str) -> str:
  text = render(turns)
  if parse_hh(text) != list(turns):
    raise ValueError(f"{key!r}: text contains a '\\n\\nHuman:' or '\\n\\nAssistant:' header")
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
      raise ValueError(f"'text' must end with a Human turn, not {turns[-1].role}")
  category = _text_field(obj, "category", required=False) or ""
  return {"id": _text_field(obj, "id", required=False) or "",
          "prompt": _rendered(turns, "prompt"), "category": category}


def read_prompts(path: str) -> list[tuple[str, tuple[Turn, ...]]]:
  """(id, request turns) per line of a prompt JSONL (``parse_prompt_row``: ``{"prompt":
  str}`` or ``{"text": HH dialogue ending with a Human turn}``, optional ``id``)."""
  return [(row["id"], tuple(parse_hh(row["prompt"]))) for row in read_jsonl(path,
                                                                          parse_prompt_row)]


def parse_preference_row(obj: dict) -> dict[str, Any]:
  """A chosen/rejected line -> a ``preference_features`` example (id "" if absent)."""
  prompts, responses = {}, {}
  for key in ("chosen", "rejected"):
    turns = _conversation(_text_field(obj, key), key)
    if turns[-1].role != ASSISTANT:
      raise ValueError(f"{key!r} must end with an Assistant turn, not {turns[-1].role}")
    if len(turns) < 2:
      raise ValueError(f"{key!r} has no prompt before its Assistant response")
    prompts[key], responses[key] = turns[:-1], turns[-1].text
  if prompts["chosen"] != prompts["rejected"]:
    a, b = prompts["chosen"], prompts["rejected"]
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    raise ValueError(f"'chosen' and 'rejected' have different prompts ({len(a)} vs {len(b)} "
                     f"turns, first difference at turn {k})")
  p = obj.get("p_chosen", 1.0)
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
    raise ValueError(f"'p_chosen' must be a number in [0, 1], got {p!r}")
  return {"id": _text_field(obj, "id", required=False) or "",
          "prompt": _rendered(prompts["chosen"], "prompt"), "chosen": responses["chosen"],
          "rejected": responses["rejected"], "p_chosen": np.float32(p)}
