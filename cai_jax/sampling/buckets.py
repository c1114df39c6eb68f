"""Shape buckets: every jitted sampler function sees a handful of static shapes.

Recompilation is the most common "slow JAX" bug. The
sampler pads the batch, the prompt (or continuation chunk) length and the
generation budget up to a bucket, so calls with similar sizes reuse one executable.
Buckets are powers of two with a floor; the batch bucket is also a multiple of the
mesh's batch-sharding size.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MIN_BATCH = 1
MIN_LENGTH = 16
MIN_STOP = 4


def pow2_at_least(n: int, floor: int = 1) -> int:
  """Smallest power of two >= max(n, floor)."""
  n = max(int(n), int(floor), 1)
  return 1 << (n - 1).bit_length()


def batch_bucket(n: int, multiple: int = 1) -> int:
  """Batch size bucket: a power of two, rounded up to a multiple of ``multiple``."""
  b = pow2_at_least(n, MIN_BATCH)
  return int(math.ceil(b / multiple) * multiple)


def length_bucket(n: int, room: int | None = None) -> int:
  """Sequence-length bucket (prompt, continuation chunk, generation budget).

  With ``room`` (e.g. what the model's ``max_seq_len`` leaves), a bucket longer than
  ``room`` shrinks to ``max(room, n)``: near the limit lengths are used as they are.
  """
  return _within_room(pow2_at_least(n, MIN_LENGTH), n, room)


def _within_room(b: int, n: int, room: int | None) -> int:
  """Bucket ``b`` for ``n`` tokens, or ``max(room, n)`` when ``b`` exceeds ``room``."""
  return b if room is None or b <= room else max(room, n)


def prompt_bucket(n: int, room: int | None = None) -> int:
  """Prompt-length bucket of a prefill: ``length_bucket``'s powers of two with a step at
  three quarters of each octave above 32 (48, 96, 192, ...). Prefill is compute-bound, so
  padding is paid in full: 34-41-token chat prompts get 48 columns instead of 64, at the
  price of at most twice the prefill executables. ``room`` as in ``length_bucket``.
  """
  b = pow2_at_least(n, MIN_LENGTH)
  if b > 32 and n <= 3 * b // 4:
    b = 3 * b // 4
  return _within_room(b, n, room)


def train_bucket(n: int, cap: int | None = None) -> int:
  """Row length of a training or scoring batch whose longest row has ``n`` tokens.

  A power of two up to 128, then a multiple of 32: right padding costs compute in every
  layer, so a batch of 139-token rows gets 160 columns rather than 256, at the price of a
  few more executables. ``cap`` (a fixed length the caller would otherwise use) bounds it,
  never below ``n``.
  """
  b = pow2_at_least(n, MIN_LENGTH) if n <= 128 else int(math.ceil(n / 32) * 32)
  return b if cap is None else max(int(n), min(b, int(cap)))


MIN_ATTEND = 128


def attend_bucket(n: int, cache_len: int) -> int:
  """Slots a step attends to when its last written slot is ``n - 1``: a power of two
  (at least ``MIN_ATTEND``), at most the cache length (and the whole cache once writes go
  round it, ``n > cache_len``).

  Attention reads only this live part of the cache, so its cost follows the
  conversation's length rather than the cache's; the few buckets bound the executables.
  """
  return min(int(cache_len), pow2_at_least(n, MIN_ATTEND))


def cache_bucket(n: int) -> int:
  """Cache-length bucket: a power of two up to 128, then a multiple of 64.

  Attention reads only the live part of the cache (``attend_bucket``), but prefill,
  growth and memory still scale with its length; growing conversations move to the next
  bucket (one copy).
  """
  if n <= 128:
    return pow2_at_least(n, MIN_LENGTH)
  return int(math.ceil(n / 64) * 64)


def left_pad(seqs: Sequence[Sequence[int]], length: int, rows: int,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-aligns ragged token lists in a [rows, length] int32 array.

  Left padding puts every row's last token at column ``length - 1``, so the
  sampler reads logits at one static position.

  Args:
    seqs: ragged token-id lists; ``len(seqs) <= rows``, each ``len <= length``.
    length: padded length.
    rows: padded batch size (extra rows are all padding, length 0).
    pad_id: filler token id.

  Returns:
    (tokens [rows, length] int32, lengths [rows] int32).
  """
  tokens = np.full((rows, length), pad_id, np.int32)
  lengths = np.zeros((rows,), np.int32)
  for i, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f"sequence {i} has {len(s)} tokens, more than the bucket {length}")
    if len(s):
      tokens[i, length - len(s):] = np.asarray(s, np.int32)
    lengths[i] = len(s)
  return tokens, lengths


def stop_array(stop_tokens: Sequence[int]) -> np.ndarray:
  """Stop-token ids padded with -1 (never a token) to a bucketed length."""
  stops = [int(t) for t in stop_tokens]
  out = np.full((pow2_at_least(len(stops), MIN_STOP),), -1, np.int32)
  out[:len(stops)] = stops
  return out
