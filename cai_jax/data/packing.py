"""Packing variable-length (ids, loss_mask) examples into fixed rows of ``seq_len`` tokens.

A packed row holds several examples back to back; four int32 arrays describe it:

  ``tokens``: the ids, right-padded with ``pad_id``;
  ``loss_mask``: each example's mask, aligned with ``tokens`` (0 on padding);
  ``segment_ids``: 1, 2, ... per example in the row, 0 on padding;
  ``positions``: 0, 1, ... restarting at every example (0 on padding).

Feed ``segment_ids``/``positions`` to the model (``segment_ids_bt``/``positions_bt``) so
attention stays inside an example, and weight next-token targets with
``next_token_weights`` so no example predicts the first token of the next one.
Examples longer than ``seq_len`` are truncated to their first ``seq_len`` tokens (or, for
a scored response, to their bos and last tokens: ``pad_example(..., keep="end")``) and
counted; none is ever dropped.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import grain
import numpy as np

Example = tuple[Sequence[int], Sequence[int]]  # (ids, loss_mask)
FIELDS = ("tokens", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class PackStats:
  """What packing did. ``fill`` is the share of row slots holding tokens."""

  num_examples: int
  num_rows: int
  num_tokens: int
  num_truncated: int
  num_truncated_tokens: int
  seq_len: int

  @property
  def fill(self) -> float:
    return self.num_tokens / max(1, self.num_rows * self.seq_len)


@dataclasses.dataclass(frozen=True)
class PackedArrays:
  """[rows, seq_len] int32 ``tokens``, ``loss_mask``, ``segment_ids``, ``positions``."""

  tokens: np.ndarray
  loss_mask: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  stats: PackStats

  def as_dict(self) -> dict[str, np.ndarray]:
    return {k: getattr(self, k) for k in FIELDS}


def _checked(i: int, ids: Sequence[int], mask: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  ids, mask = np.asarray(ids, np.int32).reshape(-1), np.asarray(mask, np.int32).reshape(-1)
  if len(ids) != len(mask):
    raise ValueError(f"example {i}: {len(ids)} ids but {len(mask)} loss-mask entries")
  if not len(ids):
    raise ValueError(f"example {i} is empty; nothing to pack")
  return ids, mask


def assemble_row(examples: Sequence[Example], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """Lays out examples (each at most ``seq_len`` long, in total too) as one row."""
  row = {k: np.zeros(seq_len, np.int32) for k in FIELDS}
  row["tokens"][:] = pad_id
  at = 0
  for seg, (ids, mask) in enumerate(examples, 1):
    n = len(ids)
    if at + n > seq_len:
      raise ValueError(f"examples of {at + n} tokens do not fit a row of {seq_len}")
    row["tokens"][at:at + n] = ids
    row["loss_mask"][at:at + n] = mask
    row["segment_ids"][at:at + n] = seg
    row["positions"][at:at + n] = np.arange(n, dtype=np.int32)
    at += n
  return row


def first_fit(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
  """First-fit bin packing: each length goes to the first row with room, in input order.

  O(n log n) with a max segment tree over the rows' free space.

  Returns:
    Per row, the indices of the lengths placed in it (increasing).

  Raises:
    ValueError: on a length outside ``[1, seq_len]``.
  """
  n = len(lengths)
  size = 1
  while size < max(1, n):
    size *= 2
  free = np.zeros(2 * size, np.int64)
  free[size:size + n] = seq_len  # row r is leaf size + r; only n rows can ever open
  for i in range(size - 1, 0, -1):
    free[i] = max(free[2 * i], free[2 * i + 1])
  rows: list[list[int]] = []
  for i, length in enumerate(lengths):
    if not 1 <= length <= seq_len:
      raise ValueError(f"length {length} of example {i} is outside [1, {seq_len}]")
    node = 1
    while node < size:  # leftmost leaf with enough room
      node = 2 * node if free[2 * node] >= length else 2 * node + 1
    r = node - size
    if r == len(rows):
      rows.append([])
    rows[r].append(i)
    free[node] -= length
    node //= 2
    while node:
      free[node] = max(free[2 * node], free[2 * node + 1])
      node //= 2
  return rows


def pack_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> PackedArrays:
  """First-fit packs (ids, loss_mask) examples into rows; longer ones are truncated.

  Args:
    examples: (ids, loss_mask) pairs of equal, non-zero length.
    seq_len: row length.
    pad_id: id written on padding.

  Returns:
    The packed arrays and their ``PackStats``.

  Raises:
    ValueError: on an empty example or a length mismatch (naming the example).
  """
  if seq_len < 1:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  cut, truncated, cut_tokens = [], 0, 0
  for i, (ids, mask) in enumerate(examples):
    ids, mask = _checked(i, ids, mask)
    if len(ids) > seq_len:
      truncated += 1
      cut_tokens += len(ids) - seq_len
    cut.append((ids[:seq_len], mask[:seq_len]))
  plan = first_fit([len(ids) for ids, _ in cut], seq_len)
  rows = [assemble_row([cut[i] for i in idx], seq_len, pad_id) for idx in plan]
  arrays = {k: (np.stack([r[k] for r in rows]) if rows else np.zeros((0, seq_len), np.int32))
            for k in FIELDS}
  stats = PackStats(num_examples=len(cut), num_rows=len(rows),
                    num_tokens=sum(len(ids) for ids, _ in cut), num_truncated=truncated,
                    num_truncated_tokens=cut_tokens, seq_len=seq_len)
  return PackedArrays(**arrays, stats=stats)


def keep_end(ids: np.ndarray, mask: np.ndarray, seq_len: int, *,
             keep_first: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """An example cut to ``seq_len`` tokens from the left: its first ``keep_first`` tokens
  (the bos) and its last ``seq_len - keep_first`` ones. A response at the end of the
  example keeps its end-of-turn token, where a preference model reads its score."""
  if len(ids) <= seq_len:
    return ids, mask
  keep_first = min(keep_first, seq_len - 1)
  tail = seq_len - keep_first
  return (np.concatenate([ids[:keep_first], ids[-tail:]]),
          np.concatenate([mask[:keep_first], mask[-tail:]]))


def pad_example(ids: Sequence[int], loss_mask: Sequence[int], seq_len: int,
                pad_id: int, *, keep: str = "start") -> dict[str, np.ndarray]:
  """One example as a row of its own (segment 1), plus ``num_truncated`` (0 or 1).

  An example longer than ``seq_len`` keeps its first tokens (``keep="start"``), or its
  first token and its last ones (``keep="end"``, see ``keep_end``: for responses scored
  at their end, whose prompt may be cut instead).
  """
  ids, mask = _checked(0, ids, loss_mask)
  truncated = len(ids) > seq_len
  if keep == "end":
    ids, mask = keep_end(ids, mask, seq_len)
  elif keep != "start":
    raise ValueError(f"keep must be 'start' or 'end', got {keep!r}")
  row = assemble_row([(ids[:seq_len], mask[:seq_len])], seq_len, pad_id)
  row["num_truncated"] = np.int32(truncated)
  return row


def next_token_weights(loss_mask: Any, segment_ids: Any) -> Any:
  """Weights of the targets ``tokens[..., 1:]``: the loss mask, zeroed where a target
  starts a new segment (it is not predicted by its own example). Works on numpy and jax."""
  same = segment_ids[..., 1:] == segment_ids[..., :-1]
  return loss_mask[..., 1:] * same.astype(loss_mask.dtype)


class PackIterDataset(grain.IterDataset):
  """Streams packed rows from elements ``{"ids", "loss_mask"}`` (1-D int arrays).

  Keeps up to ``num_open_rows`` rows open; an example goes to the first open row with
  room (first fit), else the oldest row is emitted and a new one opened. Full rows are
  emitted at once; at the end of the input the open rows are flushed in order. Each row
  has the ``FIELDS`` arrays plus ``num_truncated`` (int32: examples cut in this row).

  The iterator's state holds the open rows' tokens, so ``get_state``/``set_state``
  resume exactly (state size ~ ``num_open_rows * seq_len`` ints).
  """

  def __init__(self, parent: grain.IterDataset, *, seq_len: int, pad_id: int,
               num_open_rows: int = 4):
    super().__init__(parent)
    if seq_len < 1 or num_open_rows < 1:
      raise ValueError(f"need seq_len >= 1 and num_open_rows >= 1, got {seq_len}, "
                       f"{num_open_rows}")
    self._seq_len, self._pad_id, self._num_open = seq_len, pad_id, num_open_rows

  def __iter__(self) -> _PackIterator:
    return _PackIterator(self._parent.__iter__(), self._seq_len, self._pad_id, self._num_open)

  def __str__(self) -> str:
    return f"PackIterDataset(seq_len={self._seq_len}, num_open_rows={self._num_open})"


class _PackIterator(grain.DatasetIterator):
  """See ``PackIterDataset``. Open row: ``{"ex": [[ids], [mask]] list, "used", "cut"}``."""

  def __init__(self, parent: grain.DatasetIterator, seq_len: int, pad_id: int, num_open: int):
    super().__init__(parent)
    self._seq_len, self._pad_id, self._num_open = seq_len, pad_id, num_open
    self._open: list[dict[str, Any]] = []
    self._count = 0  # examples read, for error messages

  def _emit(self, r: int) -> dict[str, np.ndarray]:
    row = self._open.pop(r)
    out = assemble_row([(np.asarray(i, np.int32), np.asarray(m, np.int32))
                        for i, m in row["ex"]], self._seq_len, self._pad_id)
    out["num_truncated"] = np.int32(row["cut"])
    return out

  def __next__(self) -> dict[str, np.ndarray]:
    while True:
      full = next((r for r, row in enumerate(self._open) if row["used"] == self._seq_len), None)
      if full is not None:
        return self._emit(full)
      try:
        element = next(self._parent)
      except StopIteration:
        if self._open:
          return self._emit(0)
        raise
      ids, mask = _checked(self._count, element["ids"], element["loss_mask"])
      self._count += 1
      cut = int(len(ids) > self._seq_len)
      ids, mask = ids[:self._seq_len].tolist(), mask[:self._seq_len].tolist()
      r = next((r for r, row in enumerate(self._open)
                if row["used"] + len(ids) <= self._seq_len), None)
      out = None
      if r is None:
        if len(self._open) == self._num_open:
          out = self._emit(0)
        self._open.append({"ex": [], "used": 0, "cut": 0})
        r = len(self._open) - 1
      row = self._open[r]
      row["ex"].append([ids, mask])
      row["used"] += len(ids)
      row["cut"] += cut
      if out is not None:
        return out

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "count": self._count,
            "open": [dict(row, ex=[list(e) for e in row["ex"]]) for row in self._open]}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._count = state["count"]
    self._open = [dict(row, ex=[list(e) for e in row["ex"]]) for row in state["open"]]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self
