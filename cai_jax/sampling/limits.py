"""Length policy: what the sampler does with text longer than the model's ``max_seq_len``.

Every sampling and scoring call knows the limit ``L = cfg.max_seq_len`` of its model.
A row's length is the number of tokens in its sequence (prompt, earlier turns, the text
added by this call and the tokens it may generate). Two policies (gin:
``length_policy.overflow = 'error'``):

* ``"error"``: a call in which a row's length would pass ``L`` raises ``ValueError``
  before anything is allocated or compiled, naming the rows, their lengths and ``L``.
* ``"truncate"`` (default): a row keeps the LAST tokens of its sequence (left
  truncation). A fresh prompt keeps its last ``L - max_new_tokens`` tokens (at least
  one); a conversation row continued past ``L`` is prefilled afresh from its whole
  sequence (history + new text), truncated the same way. A row that reaches ``L``
  while decoding (``max_new_tokens >= L``, or ``Sampler.decode`` with more tokens than
  ``start`` reserved) stops as if it had hit its ``max_new_tokens``: a shorter output
  without a stop token. Truncated rows and rows cut at the limit are counted
  (``Sampler.length_stats``) and each call that did either logs one warning.

The KV cache never has more than ``L`` slots. Rows of a batch share cache slots, so
ragged rows leave padding; near ``L`` the sampler packs it out (``engine.pack``), and
when a continuation still does not fit it prefills the rows afresh instead.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import gin

POLICIES = ("error", "truncate")
TRUNCATED = "truncated_prompts"
CUT = "rows_cut_at_limit"
_SHOWN = 5  # offending rows named in an error message

log = logging.getLogger(__name__)


def check_policy(overflow: str) -> str:
  """Returns ``overflow`` if it names a policy, else raises ``ValueError``."""
  if overflow not in POLICIES:
    raise ValueError(f"overflow must be one of {POLICIES}, got {overflow!r}")
  return overflow


@gin.configurable
def length_policy(overflow: str = "truncate") -> str:
  """The overflow policy of samplers built without an explicit ``overflow``.

  Args:
    overflow: "truncate" (keep the last tokens, stop rows at the limit) or "error".
  """
  return check_policy(overflow)


def new_stats() -> dict[str, int]:
  """Zeroed counters: texts truncated and rows cut at the limit."""
  return {TRUNCATED: 0, CUT: 0}


@dataclasses.dataclass
class Fit:
  """The tokens of each row that a call keeps.

  Attributes:
    kept: per row, the last tokens of the row's new text that fit.
    dropped: per row, how many tokens were dropped from the front (0: none).
  """

  kept: list[list[int]]
  dropped: list[int]

  @property
  def truncated(self) -> int:
    """Number of rows that lost tokens."""
    return sum(d > 0 for d in self.dropped)


def _per_row(x: int | Sequence[int], n: int) -> list[int]:
  return [int(x)] * n if isinstance(x, int) else [int(v) for v in x]


def overflow_message(what: str, rows: Sequence[int], parts: Sequence[str], limit: int) -> str:
  """The error for rows whose length passes the limit (the first few named)."""
  shown = "; ".join(f"row {i}: {p}" for i, p in list(zip(rows, parts))[:_SHOWN])
  more = f" (and {len(rows) - _SHOWN} more)" if len(rows) > _SHOWN else ""
  return (f"{len(rows)} {what} row(s) exceed the model's max_seq_len={limit}: {shown}{more}. "
          "Shorten them, or use length_policy.overflow='truncate' to keep their last tokens.")


def _describe(base: int, new: int, reserve: int, what: str) -> str:
  parts = ([f"{base} in the sequence"] if base else []) + ([f"{new} {what}"] if new else [])
  parts += [f"{reserve} more"] if reserve else []
  return " + ".join(parts) + f" = {base + new + reserve} tokens"


def check_rows(rows: Sequence[Sequence[int]], limit: int, policy: str, *,
               base: int | Sequence[int] = 0, reserve: int | Sequence[int] = 0,
               what: str = "prompt") -> bool:
  """Whether every row fits: ``base[i] + len(rows[i]) + reserve[i] <= limit``.

  Under "error" a row that does not fit raises ``ValueError`` instead.
  """
  base, reserve = _per_row(base, len(rows)), _per_row(reserve, len(rows))
  over = [i for i, r in enumerate(rows) if base[i] + len(r) + reserve[i] > limit]
  if over and policy == "error":
    raise ValueError(overflow_message(
        what, over, [_describe(base[i], len(rows[i]), reserve[i], what) for i in over], limit))
  return not over


def fit_rows(rows: Sequence[Sequence[int]], limit: int, policy: str, *,
             reserve: int | Sequence[int] = 0, what: str = "prompt") -> Fit:
  """Applies the policy to token lists that start a sequence (``check_rows``).

  Under "truncate" a row that does not fit keeps its last
  ``max(limit - reserve[i], 1)`` tokens.
  """
  check_rows(rows, limit, policy, reserve=reserve, what=what)
  kept, dropped = [], []
  for r, res in zip(rows, _per_row(reserve, len(rows))):
    keep = min(len(r), max(limit - res, 1))
    kept.append(list(r[len(r) - keep:]))
    dropped.append(len(r) - keep)
  return Fit(kept, dropped)


def budgets(lengths: Sequence[int], max_new_tokens: int, limit: int) -> list[int]:
  """Tokens each row may still generate: ``min(max_new_tokens, limit - length)``, >= 0."""
  return [max(0, min(max_new_tokens, limit - n)) for n in lengths]


def check_budgets(lengths: Sequence[int], max_new_tokens: int, limit: int, policy: str,
                  what: str = "conversation") -> list[int]:
  """``budgets``, raising under "error" when a row cannot generate ``max_new_tokens``."""
  out = budgets(lengths, max_new_tokens, limit)
  over = [i for i, b in enumerate(out) if b < max_new_tokens]
  if over and policy == "error":
    raise ValueError(overflow_message(
        what, over, [_describe(lengths[i], 0, max_new_tokens, what) for i in over], limit))
  return out


def cut_rows(counts: Sequence[int], budget: Sequence[int], max_new_tokens: int,
             last_is_stop: Sequence[bool]) -> list[bool]:
  """Rows that stopped because the limit left them fewer than ``max_new_tokens``."""
  return [b < max_new_tokens and c == b and not s
          for c, b, s in zip(counts, budget, last_is_stop)]


def warn(counts: dict[str, int], limit: int) -> None:
  """Logs one warning for a call that truncated texts or cut rows (nothing otherwise)."""
  if counts[TRUNCATED] or counts[CUT]:
    log.warning("max_seq_len=%d: %d rows truncated to their last tokens, %d rows stopped "
                "at the limit", limit, counts[TRUNCATED], counts[CUT])


def ends_with_stop(tokens_bn, counts: Sequence[int], stop_tokens: Sequence[int]) -> list[bool]:
  """Per row, whether its last generated token (of ``counts[i]``) is a stop token."""
  stops = {int(t) for t in stop_tokens}
  return [c > 0 and int(tokens_bn[i, c - 1]) in stops for i, c in enumerate(counts)]
