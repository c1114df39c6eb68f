"""Conversation files for supervised fine-tuning, and fixed-length batching.

A conversations file is JSONL; each line is one of
  {"turns": [{"role": "Human", "text": "..."}, {"role": "Assistant", "text": "..."}]}
  {"text": "\\n\\nHuman: ...\\n\\nAssistant: ..."}       (the common public format)
Malformed lines raise ``ValueError`` naming the file, the line and the problem;
nothing is dropped silently.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Sequence

import grain
import numpy as np

from cai_jax.data.dialogue import Turn, parse_hh


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
