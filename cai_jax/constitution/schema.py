"""The in-memory form of a constitution: frozen dataclasses and the validation error.

A constitution (Bai et al. 2022, Sec. 3.1 and 4.1) is a short written rulebook: critique /
revision principle pairs for SL-CAI, multiple-choice comparison principles for the RL-CAI
feedback model, and optional few-shot exemplars for both. The file format is documented in
``constitutions/README.md`` and parsed by ``cai_jax.constitution.load``.

Everything here is immutable and hashable, so a loaded constitution can be shared between
threads, used as a dict key, and fingerprinted (``Constitution.content_hash``) for lineage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from cai_jax.data.dialogue import Turn

SCHEMA_VERSION = 1
"""The only ``version`` this code reads; bump it (and migrate files) on breaking changes."""

OPTION_LETTERS = ("A", "B")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One thing wrong with a constitution file: where (a JSON path) and what."""

  path: str
  message: str

  def __str__(self) -> str:
    return f"{self.path}: {self.message}"


class ConstitutionError(ValueError):
  """A constitution file that cannot be used; ``problems`` lists everything wrong with it.

  Attributes:
    source: the file (or a label for in-memory data) that was read.
    problems: every problem found, each with its JSON path in the file.
  """

  def __init__(self, source: str, problems: list[Problem] | tuple[Problem, ...]):
    self.source = source
    self.problems = tuple(problems)
    n = len(self.problems)
    lines = [f"invalid constitution {source}: {n} problem{'s' if n != 1 else ''}"]
    lines += [f"  - {p}" for p in self.problems]
    super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class CritiquePrinciple:
  """An SL-CAI principle: a critique request and the matching revision request.

  Attributes:
    id: short unique name, recorded in generated data (e.g. ``"harmful-content"``).
    critique_request: asks the model to critique the assistant's last response.
    revision_request: asks the model to rewrite that response. It must make sense on its
      own, without a critique before it (the direct-revision ablation uses it that way).
  """

  id: str
  critique_request: str
  revision_request: str


@dataclasses.dataclass(frozen=True)
class ComparisonPrinciple:
  """An RL-CAI principle: the multiple-choice question the feedback model answers.

  Attributes:
    id: short unique name, recorded in preference data.
    text: the question, e.g. ``"Which of these assistant responses is less harmful?"``;
      it is followed by the options ``(A)`` and ``(B)``.
  """

  id: str
  text: str


@dataclasses.dataclass(frozen=True)
class Exemplar:
  """A few-shot critique / revision example, as literal dialogue turns.

  ``turns`` is a dialogue (``Human`` / ``Assistant`` turns, ending with an ``Assistant``
  turn) followed by one or more rounds of ``CritiqueRequest``, ``Critique``,
  ``RevisionRequest``, ``Revision``.
  """

  id: str
  turns: tuple[Turn, ...]


@dataclasses.dataclass(frozen=True)
class ComparisonExemplar:
  """A few-shot example for the feedback model's multiple-choice comparison.

  Attributes:
    id: short unique name.
    conversation: the dialogue the two responses answer (ends with a ``Human`` turn).
    response_a: option (A).
    response_b: option (B).
    principle: the comparison question asked in this example (literal text).
    answer: ``"A"`` or ``"B"``.
    reasoning: a short chain of thought for the CoT variant ("" if none).
  """

  id: str
  conversation: tuple[Turn, ...]
  response_a: str
  response_b: str
  principle: str
  answer: str
  reasoning: str = ""


@dataclasses.dataclass(frozen=True)
class Constitution:
  """A validated constitution. Build one with ``load_constitution`` or ``parse_constitution``.

  Attributes:
    version: the schema version (``SCHEMA_VERSION``).
    name: short name (e.g. ``"default"``, ``"toy"``).
    description: what it is for, in a sentence or two.
    critique_principles: the SL-CAI critique / revision pairs.
    comparison_principles: the RL-CAI multiple-choice questions.
    critique_exemplars: few-shot critique / revision examples.
    comparison_exemplars: few-shot comparison examples.
    source: where it was loaded from (not part of equality or the content hash).
  """

  version: int
  name: str
  description: str
  critique_principles: tuple[CritiquePrinciple, ...]
  comparison_principles: tuple[ComparisonPrinciple, ...]
  critique_exemplars: tuple[Exemplar, ...] = ()
  comparison_exemplars: tuple[ComparisonExemplar, ...] = ()
  source: str = dataclasses.field(default="", compare=False)

  def critique_principle(self, principle_id: str) -> CritiquePrinciple:
    """The critique principle with this id.

    Raises:
      KeyError: if there is none (the message lists the known ids).
    """
    return _by_id(self.critique_principles, principle_id, "critique")

  def comparison_principle(self, principle_id: str) -> ComparisonPrinciple:
    """The comparison principle with this id.

    Raises:
      KeyError: if there is none (the message lists the known ids).
    """
    return _by_id(self.comparison_principles, principle_id, "comparison")

  def to_dict(self) -> dict[str, Any]:
    """The constitution as plain JSON data, in the file schema (every field explicit)."""
    return {
        "version": self.version,
        "name": self.name,
        "description": self.description,
        "critique_principles": [dataclasses.asdict(p) for p in self.critique_principles],
        "comparison_principles": [dataclasses.asdict(p) for p in self.comparison_principles],
        "critique_exemplars": [
            {"id": e.id, "turns": _turns_to_json(e.turns)} for e in self.critique_exemplars],
        "comparison_exemplars": [
            {"id": e.id, "conversation": _turns_to_json(e.conversation),
             "response_a": e.response_a, "response_b": e.response_b,
             "principle": e.principle, "answer": e.answer, "reasoning": e.reasoning}
            for e in self.comparison_exemplars],
    }

  def to_json(self, *, indent: int | None = 2) -> str:
    """The constitution as JSON text (e.g. to store it in a program's workdir)."""
    return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False) + "\n"

  @property
  def content_hash(self) -> str:
    """sha256 (hex) of the canonical JSON of ``to_dict()``.

    Canonical: sorted keys, no whitespace, UTF-8. So the hash ignores key order,
    formatting and optional fields left at their defaults, and changes whenever any
    principle, exemplar, name or description changes.
    """
    canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _turns_to_json(turns: tuple[Turn, ...]) -> list[dict[str, str]]:
  return [{"role": t.role, "text": t.text} for t in turns]


def _by_id(items, principle_id: str, kind: str):
  for item in items:
    if item.id == principle_id:
      return item
  known = ", ".join(item.id for item in items)
  raise KeyError(f"no {kind} principle with id {principle_id!r}; known ids: {known}")
