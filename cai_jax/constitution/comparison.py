"""The RL-CAI feedback model's multiple-choice comparison prompt (Bai et al. 2022, Sec. 4.1).

Layout, as dialogue turns (few-shot exemplars first, each a question and its answer)::

    Human: Consider the following conversation between a human and an assistant:
    Human: <request>
    <principle.text>
    Options:
    (A) <response A>
    (B) <response B>
    Assistant: The answer is:              <- comparison_prompt ends here; next: " (A)"

The conversation inside the question is written one turn per line (``Human: ...``), so the
question stays one turn. With chain of thought the assistant turn starts ``Let's think
step-by-step:``; the model writes its reasoning (ending the turn), and ``cot_answer_prompt``
rebuilds the turn as ``Let's think step-by-step: <reasoning>\\nTherefore the answer is:``.
In both cases the judge reads the log-probabilities of the option strings ``"(A)"`` and
``"(B)"`` as the next token (one space after the colon: a word-initial token).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from cai_jax.constitution.prompt import Prompt, as_turns, check_dialogue
from cai_jax.constitution.schema import ComparisonExemplar, ComparisonPrinciple
from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn

OPTION_A = "(A)"
OPTION_B = "(B)"
OPTIONS = (OPTION_A, OPTION_B)
COMPARISON_INTRO = "Consider the following conversation between a human and an assistant:"
OPTIONS_HEADER = "Options:"
ANSWER_PREFIX = "The answer is:"
COT_PREFIX = "Let's think step-by-step:"
COT_ANSWER = "Therefore the answer is:"


def comparison_question(conversation: str | Sequence[Turn], response_a: str, response_b: str,
                        principle: ComparisonPrinciple | str) -> str:
  """The body of the comparison's ``Human`` turn (see the module docstring)."""
  turns = as_turns(conversation)
  check_dialogue(turns, "the conversation being judged")
  text = principle.text if isinstance(principle, ComparisonPrinciple) else principle
  lines = [COMPARISON_INTRO] + [f"{t.role}: {t.text}" for t in turns]
  lines += [text, OPTIONS_HEADER, f"{OPTION_A} {response_a}", f"{OPTION_B} {response_b}"]
  return "\n".join(lines)


def _answer_body(letter: str, reasoning: str | None) -> str:
  option = OPTIONS[("A", "B").index(letter)]
  if reasoning is None:
    return f"{ANSWER_PREFIX} {option}"
  return f"{_cot_answer_prefix(reasoning)} {option}"


def _cot_answer_prefix(reasoning: str) -> str:
  reasoning = trim_reasoning(reasoning)
  return f"{COT_PREFIX} {reasoning}\n{COT_ANSWER}" if reasoning else \
      f"{COT_PREFIX}\n{COT_ANSWER}"


def comparison_prompt(conversation: str | Sequence[Turn], response_a: str, response_b: str,
                      principle: ComparisonPrinciple | str, *, chain_of_thought: bool = False,
                      exemplars: Sequence[ComparisonExemplar] = ()) -> Prompt:
  """The feedback model's multiple-choice prompt (Bai et al. 2022, Sec. 4.1).

  Args:
    conversation: the request (a string) or dialogue ending with the ``Human`` turn that
      both responses answer.
    response_a: the response shown as option (A).
    response_b: the response shown as option (B).
    principle: the comparison principle (or its text).
    chain_of_thought: if True, the model first writes its reasoning.
    exemplars: few-shot comparisons, each shown as a question and its answer (with its
      reasoning when ``chain_of_thought``).

  Returns:
    Without CoT: ends with ``"\\n\\nAssistant: The answer is:"``; the judge scores the
    option strings ``"(A)"`` / ``"(B)"`` as the next token. With CoT: ends with
    ``"\\n\\nAssistant: Let's think step-by-step:"``; the model writes its reasoning, then
    ``cot_answer_prompt`` gives the prompt to score.

  Raises:
    ValueError: if ``chain_of_thought`` and an exemplar has no reasoning.
  """
  context: list[Turn] = []
  for e in exemplars:
    if chain_of_thought and not e.reasoning:
      raise ValueError(f"comparison exemplar {e.id!r} has no reasoning for chain of thought")
    question = comparison_question(e.conversation, e.response_a, e.response_b, e.principle)
    context += [Turn(HUMAN, question),
                Turn(ASSISTANT, _answer_body(e.answer, e.reasoning if chain_of_thought
                                             else None))]
  question = comparison_question(conversation, response_a, response_b, principle)
  return Prompt(tuple(context) + (Turn(HUMAN, question),), ASSISTANT,
                prefix=COT_PREFIX if chain_of_thought else ANSWER_PREFIX,
                num_exemplar_turns=len(context))


def trim_reasoning(text: str) -> str:
  """A generated chain of thought, cut before any answer the model wrote itself.

  Anything from ``"Therefore the answer is:"`` or ``"The answer is:"`` (any case) on is
  dropped; surrounding whitespace and blank lines are removed.
  """
  cut = len(text)
  lowered = text.lower()
  for marker in (COT_ANSWER, ANSWER_PREFIX):
    i = lowered.find(marker.lower())
    if i >= 0:
      cut = min(cut, i)
  # A blank line would read as a turn boundary in the text format: keep single newlines.
  return re.sub(r"\n\s*\n", "\n", text[:cut].strip())


def cot_answer_prompt(cot_prompt: Prompt, reasoning: str) -> Prompt:
  """The prompt scored after chain of thought.

  Args:
    cot_prompt: ``comparison_prompt(..., chain_of_thought=True)``.
    reasoning: what the model wrote after ``"Let's think step-by-step:"`` (anything from
      an answer marker on is dropped, see ``trim_reasoning``).

  Returns:
    The same turns, the open assistant turn now
    ``"Let's think step-by-step: <reasoning>\\nTherefore the answer is:"``; the judge
    scores ``"(A)"`` / ``"(B)"`` as the next token.
  """
  if cot_prompt.open_role != ASSISTANT or cot_prompt.prefix != COT_PREFIX:
    raise ValueError("cot_answer_prompt needs a comparison_prompt(..., chain_of_thought=True)")
  return dataclasses.replace(cot_prompt, prefix=_cot_answer_prefix(reasoning))


def parse_answer(continuation: str) -> str | None:
  """``"A"`` or ``"B"`` if a generated answer starts with ``"(A)"`` / ``"(B)"``, else None."""
  text = continuation.strip()
  for letter, option in zip(("A", "B"), OPTIONS):
    if text.startswith(option):
      return letter
  return None
