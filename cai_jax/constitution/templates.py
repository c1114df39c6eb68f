"""Prompt templates of the constitutional phases, as dialogue turns (pure functions).

Every template returns a ``Prompt`` (``cai_jax.constitution.prompt``): the turns so far, the
role of the turn the model must write next (``open_role``), and possibly the first words of
that turn, already written (``prefix``). As text (``Prompt.text``) a prompt ends with
``"\\n\\n{open_role}:"`` or ``"\\n\\n{open_role}: {prefix}"``; the model continues with the
rest of that turn's body and ends it with the end-of-turn token. The SL-CAI layout
(Bai et al. 2022, Sec. 3.1), few-shot exemplars first, each a complete example::

    Human: <request>
    Assistant: <response>                  <- initial_prompt ends at "Assistant:"
    CritiqueRequest: <principle.critique_request>
    Critique: <critique>                   <- critique_prompt ends at "Critique:"
    RevisionRequest: <principle.revision_request>
    Revision: <revision>                   <- revision_prompt ends at "Revision:"

Rounds chain: round n+1's critique prompt continues round n's revision prompt plus the
revision (so the sampler can reuse the cached prefix), and "the assistant's last response"
then means the latest ``Revision``. ``direct_revision_prompt`` (the paper's ablation,
Sec. 3.5) is the same without the ``CritiqueRequest`` / ``Critique`` turns.

The RL-CAI feedback model's multiple-choice prompts live in
``cai_jax.constitution.comparison`` and are re-exported here.
"""
from __future__ import annotations

from typing import Sequence

from cai_jax.constitution.comparison import (ANSWER_PREFIX, COMPARISON_INTRO, COT_ANSWER,
                                             COT_PREFIX, OPTION_A, OPTION_B, OPTIONS,
                                             OPTIONS_HEADER, comparison_prompt,
                                             comparison_question, cot_answer_prompt,
                                             parse_answer, trim_reasoning)
from cai_jax.constitution.prompt import (RESPONSE_ROLES, Prompt, as_turns, check_dialogue,
                                         check_last)
from cai_jax.constitution.schema import CritiquePrinciple, Exemplar
from cai_jax.data.dialogue import (ASSISTANT, CRITIQUE, CRITIQUE_REQUEST, HUMAN, REVISION,
                                   REVISION_REQUEST, Turn)

__all__ = [
    "ANSWER_PREFIX", "COMPARISON_INTRO", "COT_ANSWER", "COT_PREFIX", "OPTION_A", "OPTION_B",
    "OPTIONS", "OPTIONS_HEADER", "Prompt", "comparison_prompt", "comparison_question",
    "cot_answer_prompt", "critique_prompt", "direct_revision_prompt", "initial_prompt",
    "latest_response", "parse_answer", "revised_dialogue", "revision_prompt",
    "trim_reasoning",
]


def _exemplar_turns(exemplars: Sequence[Exemplar], *, with_critique: bool
                    ) -> tuple[Turn, ...]:
  drop = () if with_critique else (CRITIQUE_REQUEST, CRITIQUE)
  return tuple(t for e in exemplars for t in e.turns if t.role not in drop)


def first_exemplars(exemplars: Sequence, use: bool | int) -> tuple:
  """The few-shot exemplars a program prepends: all (True), none (False / 0), or the first
  ``use`` of them.

  Raises:
    ValueError: for a negative count.
  """
  if isinstance(use, bool):
    return tuple(exemplars) if use else ()
  if use < 0:
    raise ValueError(f"exemplars must be True, False or a count >= 0, got {use}")
  return tuple(exemplars)[:use]


def initial_prompt(request: str | Sequence[Turn]) -> Prompt:
  """The red-team (or helpfulness) prompt; the model writes the assistant's answer.

  Args:
    request: the human's request, or a Human/Assistant dialogue ending with a Human turn.

  Returns:
    A prompt ending at ``"\\n\\nAssistant:"``; next, the model writes the response.
  """
  turns = as_turns(request)
  check_dialogue(turns, "a request")
  return Prompt(turns, ASSISTANT)


def critique_prompt(conversation: Sequence[Turn], principle: CritiquePrinciple,
                    exemplars: Sequence[Exemplar] = ()) -> Prompt:
  """Asks for a critique of the assistant's last response under ``principle``.

  Args:
    conversation: the dialogue ending with the response to critique (an ``Assistant``
      turn, or the ``Revision`` of the previous round), without exemplars.
    principle: supplies the ``CritiqueRequest``.
    exemplars: few-shot critique / revision examples, placed first.

  Returns:
    exemplars + conversation + ``CritiqueRequest``, ending at ``"\\n\\nCritique:"``;
    next, the model writes the critique.
  """
  turns = as_turns(conversation)
  check_last(turns, RESPONSE_ROLES, "the conversation to critique")
  context = _exemplar_turns(exemplars, with_critique=True)
  return Prompt(context + turns + (Turn(CRITIQUE_REQUEST, principle.critique_request),),
                CRITIQUE, num_exemplar_turns=len(context))


def revision_prompt(conversation_with_critique: Sequence[Turn], principle: CritiquePrinciple,
                    exemplars: Sequence[Exemplar] = ()) -> Prompt:
  """Asks for a revision of the response in light of the critique just written.

  Args:
    conversation_with_critique: ``critique_prompt(...).conversation(critique)``: the
      dialogue, its ``CritiqueRequest`` (from ``principle``) and the ``Critique``.
    principle: the same principle as the critique's (it supplies the revision request).
    exemplars: the same exemplars as the critique prompt's.

  Returns:
    exemplars + conversation + ``RevisionRequest``, ending at ``"\\n\\nRevision:"``;
    next, the model writes the revised response. Its turns extend those of the critique
    prompt plus the critique, so a sampler can reuse that prefix.

  Raises:
    ValueError: if the conversation does not end with a critique requested by
      ``principle``.
  """
  turns = as_turns(conversation_with_critique)
  check_last(turns, (CRITIQUE,), "the conversation to revise")
  if len(turns) < 2 or turns[-2] != Turn(CRITIQUE_REQUEST, principle.critique_request):
    raise ValueError(f"the critique was not requested with principle {principle.id!r}: the "
                     "revision request must come from the same principle")
  context = _exemplar_turns(exemplars, with_critique=True)
  return Prompt(context + turns + (Turn(REVISION_REQUEST, principle.revision_request),),
                REVISION, num_exemplar_turns=len(context))


def direct_revision_prompt(conversation: Sequence[Turn], principle: CritiquePrinciple,
                           exemplars: Sequence[Exemplar] = ()) -> Prompt:
  """The paper's ablation (Sec. 3.5): revise directly, without writing a critique first.

  Args:
    conversation: the dialogue ending with the response to revise (``Assistant`` or the
      previous round's ``Revision``), without exemplars.
    principle: supplies the revision request.
    exemplars: few-shot examples; their ``CritiqueRequest`` / ``Critique`` turns are left
      out.

  Returns:
    exemplars + conversation + ``RevisionRequest``, ending at ``"\\n\\nRevision:"``.
  """
  turns = as_turns(conversation)
  check_last(turns, RESPONSE_ROLES, "the conversation to revise")
  context = _exemplar_turns(exemplars, with_critique=False)
  return Prompt(context + turns + (Turn(REVISION_REQUEST, principle.revision_request),),
                REVISION, num_exemplar_turns=len(context))


def latest_response(conversation: Sequence[Turn]) -> str:
  """The text of the last ``Assistant`` or ``Revision`` turn (the current answer)."""
  for t in reversed(tuple(conversation)):
    if t.role in RESPONSE_ROLES:
      return t.text
  raise ValueError("the conversation holds no Assistant or Revision turn")


def revised_dialogue(conversation: Sequence[Turn]) -> tuple[Turn, ...]:
  """The plain dialogue with the latest revision as the assistant's answer.

  ``(Human x, Assistant y0, CritiqueRequest, ..., Revision yN)`` becomes
  ``(Human x, Assistant yN)``: the (prompt, final revision) pair SL-CAI fine-tunes on.
  """
  turns = as_turns(conversation)
  first = next((i for i, t in enumerate(turns) if t.role not in (HUMAN, ASSISTANT)),
               len(turns))
  dialogue = turns[:first]
  check_last(dialogue, (ASSISTANT,), "the dialogue before the critiques")
  return dialogue[:-1] + (Turn(ASSISTANT, latest_response(turns)),)
