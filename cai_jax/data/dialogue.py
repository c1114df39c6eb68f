"""The one place that knows how a conversation is laid out as text.

A conversation is a list of `Turn`s. Every turn has a role label (``Human``,
``Assistant``, and for the constitutional prompts also ``CritiqueRequest``,
``Critique``, ``RevisionRequest``, ``Revision``) and a body.

Two renderings exist:

* text (``render``): the common public format, each turn as
  ``"\\n\\n{role}: {body}"``. It is what JSONL files hold and what people read.
* tokens (``cai_jax.data.tokenizer.Tokenizer.encode_dialogue``): ``bos``, then per
  turn ``header(role) + body + [eos]``. The end-of-turn token (``eos``) is what the
  sampler stops on, so a model never runs on from one turn into the next.

Roles whose bodies the model is trained to write (loss on them) are the
"model roles" below; everything else is context.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

HUMAN = "Human"
ASSISTANT = "Assistant"
CRITIQUE_REQUEST = "CritiqueRequest"
CRITIQUE = "Critique"
REVISION_REQUEST = "RevisionRequest"
REVISION = "Revision"

ROLES = (HUMAN, ASSISTANT, CRITIQUE_REQUEST, CRITIQUE, REVISION_REQUEST, REVISION)
MODEL_ROLES = frozenset({ASSISTANT, CRITIQUE, REVISION})


@dataclasses.dataclass(frozen=True)
class Turn:
  """One turn of a conversation: a role label and the text after it."""

  role: str
  text: str

  def __post_init__(self):
    if self.role not in ROLES:
      raise ValueError(f"unknown dialogue role {self.role!r}; expected one of {ROLES}")

  @property
  def is_model(self) -> bool:
    return self.role in MODEL_ROLES


def render(turns: Sequence[Turn], *, open_role: str | None = None) -> str:
  """Renders turns as ``"\\n\\nRole: text"`` blocks.

  Args:
    turns: the conversation so far.
    open_role: if given, appends an empty ``"\\n\\n{open_role}:"`` header, the
      point where a model would continue.
  """
  out = "".join(f"\n\n{t.role}: {t.text}" for t in turns)
  if open_role is not None:
    if open_role not in ROLES:
      raise ValueError(f"unknown dialogue role {open_role!r}")
    out += f"\n\n{open_role}:"
  return out


_HH_SPLIT = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh(text: str) -> list[Turn]:
  """Parses the public ``\\n\\nHuman: ... \\n\\nAssistant: ...`` format.

  Raises:
    ValueError: if the text does not start with a Human/Assistant header or has
      an empty turn.
  """
  parts = _HH_SPLIT.split(text)
  if parts[0].strip():
    raise ValueError(
        f"text before the first '\\n\\nHuman:' header: {parts[0][:60]!r}")
  if len(parts) < 3:
    raise ValueError("no '\\n\\nHuman: ' or '\\n\\nAssistant: ' turn found")
  turns = []
  for role, body in zip(parts[1::2], parts[2::2]):
    turns.append(Turn(role, body.strip()))
  return turns
