"""Deterministic, seeded sampling of constitutional principles.

Bai et al. 2022 draw a principle at random for every critique / revision round (Sec. 3.1)
and for every comparison label (Sec. 4.1). For resumable, sharded generation the draw must
be a pure function of *what* is being labelled, never of the order in which work happens:
here every draw depends only on ``(seed, prompt_index, slot)`` (``slot`` = round, or
ensemble member), through sha256. So

* shards, restarts and call order cannot change which principle a prompt gets;
* ``num_rounds=1`` gives the first round of ``num_rounds=4`` (round r is the same draw);
* the result is bit-stable across Python / NumPy versions and machines.

Critique and comparison draws use separate streams, so the same ``(seed, prompt_index)``
does not tie the two choices together.
"""
from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

from cai_jax.constitution.schema import ComparisonPrinciple, Constitution, CritiquePrinciple

T = TypeVar("T")

_CRITIQUE_STREAM = "critique"
_COMPARISON_STREAM = "comparison"


def _check_index(name: str, value: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _hash64(stream: str, seed: int, prompt_index: int, slot: int) -> int:
  """A 64-bit hash of ``(stream, seed, prompt_index, slot)``."""
  key = f"cai_jax/principles/{stream}/{seed}/{prompt_index}/{slot}".encode("ascii")
  return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def draw_indices(num_items: int, *, stream: str, seed: int, prompt_index: int, num: int,
                 replace: bool) -> list[int]:
  """Draws ``num`` indices in ``[0, num_items)`` as a pure function of the arguments.

  Args:
    num_items: how many items there are to choose from (> 0).
    stream: a name separating independent uses (e.g. "critique", "comparison").
    seed: the run's seed (>= 0).
    prompt_index: the stable index of the prompt (or item) being processed (>= 0).
    num: how many to draw (>= 0).
    replace: with replacement, each slot is an independent uniform draw (slot ``k``
      depends only on ``(stream, seed, prompt_index, k)``). Without replacement, the
      indices are the first ``num`` of a random permutation of the items keyed by
      ``(stream, seed, prompt_index)``; ``num`` must not exceed ``num_items``.

  Returns:
    ``num`` indices; for both modes the first ``k`` of them do not depend on ``num``.

  Raises:
    ValueError: on negative or non-integer arguments, no items, or ``num > num_items``
      without replacement.
  """
  for name, value in (("seed", seed), ("prompt_index", prompt_index), ("num", num)):
    _check_index(name, value)
  if num_items <= 0:
    raise ValueError("cannot sample from an empty set of principles")
  if replace:
    # The modulo bias is at most num_items / 2**64: negligible.
    return [_hash64(stream, seed, prompt_index, k) % num_items for k in range(num)]
  if num > num_items:
    raise ValueError(f"cannot draw {num} distinct principles from {num_items}")
  order = sorted(range(num_items), key=lambda i: (_hash64(stream + "/perm", seed,
                                                          prompt_index, i), i))
  return order[:num]


def _pick(items: Sequence[T], indices: list[int]) -> list[T]:
  return [items[i] for i in indices]


def sample_critique_principles(constitution: Constitution, *, seed: int, prompt_index: int,
                               num_rounds: int, replace: bool = True
                               ) -> list[CritiquePrinciple]:
  """The critique / revision principle for each round of one prompt's SL-CAI chain.

  Args:
    constitution: where the principles come from.
    seed: the run's seed.
    prompt_index: the prompt's stable index in its data set (not a position in a shard).
    num_rounds: number of critique -> revision rounds.
    replace: True (default, the paper's independent uniform draw per round) or False
      (no principle repeats within a prompt's chain; needs ``num_rounds <=`` the number
      of principles).

  Returns:
    ``num_rounds`` principles; element ``r`` is round ``r``'s, the same for any
    ``num_rounds > r``.
  """
  return _pick(constitution.critique_principles, draw_indices(
      len(constitution.critique_principles), stream=_CRITIQUE_STREAM, seed=seed,
      prompt_index=prompt_index, num=num_rounds, replace=replace))


def sample_comparison_principles(constitution: Constitution, *, seed: int, prompt_index: int,
                                 num: int = 1, replace: bool = False
                                 ) -> list[ComparisonPrinciple]:
  """The comparison principle(s) under which one pair of responses is labelled.

  Args:
    constitution: where the principles come from.
    seed: the run's seed.
    prompt_index: the stable index of the prompt / pair being labelled.
    num: principles per label (> 1 for the paper's principle ensembles).
    replace: False (default): an ensemble uses ``num`` distinct principles. True: each
      member is an independent uniform draw.

  Returns:
    ``num`` principles; with ``num=1`` this is one uniform draw, as in the paper.
  """
  return _pick(constitution.comparison_principles, draw_indices(
      len(constitution.comparison_principles), stream=_COMPARISON_STREAM, seed=seed,
      prompt_index=prompt_index, num=num, replace=replace))
