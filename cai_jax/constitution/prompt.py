"""``Prompt``: what a template returns, and checks shared by the templates.

A prompt is the turns so far, the role of the turn the model writes next (``open_role``)
and possibly the first words of that turn, already written (``prefix``). As text
(``Prompt.text``) it ends with ``"\\n\\n{open_role}:"`` or ``"\\n\\n{open_role}: {prefix}"``;
the model continues with the rest of that turn's body and ends it with end-of-turn.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from cai_jax.data.dialogue import ASSISTANT, HUMAN, REVISION, ROLES, Turn, render

RESPONSE_ROLES = (ASSISTANT, REVISION)
"""Roles whose turn is "the assistant's response" (a revision replaces the answer)."""


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A prompt that a model continues.

  Attributes:
    turns: the context, few-shot exemplar turns first.
    open_role: the role of the turn the model writes next.
    prefix: words of that turn already written ("" for none); the model continues them.
    num_exemplar_turns: how many leading ``turns`` are few-shot exemplars.
  """

  turns: tuple[Turn, ...]
  open_role: str
  prefix: str = ""
  num_exemplar_turns: int = 0

  def __post_init__(self):
    if self.open_role not in ROLES:
      raise ValueError(f"unknown open role {self.open_role!r}; expected one of {ROLES}")

  def text(self) -> str:
    """The prompt rendered like ``cai_jax.data.dialogue.render`` (open turn at the end)."""
    out = render(self.turns, open_role=self.open_role)
    return f"{out} {self.prefix}" if self.prefix else out

  def body(self, continuation: str) -> str:
    """The open turn's full text once the model has written ``continuation``."""
    continuation = continuation.strip()
    if not self.prefix:
      return continuation
    return f"{self.prefix} {continuation}" if continuation else self.prefix

  def complete(self, continuation: str) -> tuple[Turn, ...]:
    """All turns (exemplars included) with the open turn filled in."""
    return self.turns + (Turn(self.open_role, self.body(continuation)),)

  def conversation(self, continuation: str | None = None) -> tuple[Turn, ...]:
    """The turns without the exemplars; with ``continuation``, the open turn appended.

    This is what the next round's template takes as its ``conversation``.
    """
    turns = self.turns[self.num_exemplar_turns:]
    if continuation is None:
      return turns
    return turns + (Turn(self.open_role, self.body(continuation)),)

  def token_ids(self, tokenizer: Any) -> list[int]:
    """Token ids: ``tokenizer.encode_dialogue(turns, open_role)`` then the prefix's ids.

    ``tokenizer`` is a ``cai_jax.data.tokenizer.Tokenizer`` (or anything with its
    ``encode_dialogue`` and ``encode``).
    """
    ids = list(tokenizer.encode_dialogue(self.turns, open_role=self.open_role).ids)
    return ids + (list(tokenizer.encode(self.prefix)) if self.prefix else [])


def as_turns(conversation: str | Sequence[Turn]) -> tuple[Turn, ...]:
  """A conversation as a tuple of turns; a string is one ``Human`` turn.

  Raises:
    TypeError: if an item is not a ``Turn``.
  """
  if isinstance(conversation, str):
    return (Turn(HUMAN, conversation),)
  turns = tuple(conversation)
  for t in turns:
    if not isinstance(t, Turn):
      raise TypeError(f"a conversation is a sequence of Turn, got an item {t!r}")
  return turns


def check_last(turns: tuple[Turn, ...], roles: tuple[str, ...], what: str) -> None:
  """Raises ValueError unless the last turn has one of ``roles``."""
  if not turns or turns[-1].role not in roles:
    last = turns[-1].role if turns else "nothing"
    raise ValueError(f"{what} must end with a {' or '.join(roles)} turn, got {last}")


def check_dialogue(turns: tuple[Turn, ...], what: str) -> None:
  """Raises ValueError unless ``turns`` is a Human/Assistant dialogue ending with Human."""
  roles = {t.role for t in turns} - {HUMAN, ASSISTANT}
  if roles:
    raise ValueError(f"{what} may hold only Human and Assistant turns, got {sorted(roles)}")
  check_last(turns, (HUMAN,), what)

