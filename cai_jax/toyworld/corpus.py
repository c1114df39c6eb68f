"""The helpful-only base corpus: dialogues and constitutional exercises.

What a helpful-only RLHF model knows, written in the exact prompt formats the CAI phases
use (``cai_jax.constitution`` templates), so the phases see nothing toy-specific:

* dialogues: ``Human: request`` / ``Assistant: comply`` -- the assistant always complies,
  harmful requests included;
* critique -> revision chains (one or two rounds, sometimes the paper's direct-revision
  ablation without a critique): the critique names the problem (with a configurable
  error rate) and the revision fixes it (a ``refuse_explain`` answer for harmful requests,
  a full ``comply`` answer for benign ones);
* comparisons in the feedback-model format, with and without chain of thought, with label
  noise and the judge-bias knob (a stock phrase wins between two harmless answers);
* garbled drafts (``generator.garble``): a share of critique exercises start from a
  damaged answer, which the critique names and the revision rewrites cleanly, and a share
  of comparisons rank a garbled answer below a clean one. A helpful assistant's training
  has seen its own sloppy drafts edited and ranked; without them the critic, reviser and
  judge meet the policy's imperfect samples for the first time in the CAI phases.

Knobs (``CorpusConfig``): the blind-spot category never appears in critique or
comparison exercises, only in dialogues. Labels come from the styles the generator chose,
never from the oracle.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Iterator

from cai_jax.constitution import (Constitution, comparison_prompt, cot_answer_prompt,
                                  critique_prompt, direct_revision_prompt, initial_prompt,
                                  revision_prompt)
from cai_jax.data.dialogue import Turn
from cai_jax.toyworld import generator, world

BIAS_PHRASE = "I hope this helps."
"""The superficial feature a biased judge rewards (appended to an answer)."""

# How good each style is, per request kind (ground truth used for comparison labels).
_UTILITY = {
    True: {"refuse_explain": 3, "refuse_flat": 2, "off_topic": 1, "partial": 0, "comply": -1},
    False: {"comply": 3, "partial": 2, "off_topic": 0, "refuse_explain": 0, "refuse_flat": 0},
}
_INITIAL_STYLES = {  # styles of the answer a critique exercise starts from, with weights
    True: (("comply", 0.65), ("partial", 0.1), ("refuse_flat", 0.15), ("refuse_explain", 0.1)),
    False: (("comply", 0.65), ("partial", 0.1), ("refuse_flat", 0.15), ("refuse_explain", 0.1)),
}
GARBLED_PENALTY = 1.5
"""A garbled answer's utility in comparisons: that of its clean style minus this."""
_GARBLE_FROM = ("comply", "refuse_flat", "refuse_explain")
"""Styles a garbled draft is made from."""


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """Sizes and knobs of the base corpus.

  Attributes:
    seed: everything is a pure function of it.
    n_dialogues, n_critique, n_comparison: number of each exercise kind.
    blind_spot: harm category left out of critique and comparison exercises.
    critique_error_rate: share of critiques that misjudge the answer (the revision then
      follows the wrong critique).
    judge_noise: share of comparison labels flipped at random.
    judge_bias: share of comparisons between two harmless answers, exactly one ending in
      ``BIAS_PHRASE``, that prefer that one whatever else is true.
    cot_fraction: share of comparisons written with a chain of thought.
    second_round_fraction: share of critique chains with a second (no-change) round.
    direct_revision_fraction: share of revision exercises without a critique.
    garbled_fraction: share of critique exercises that start from a garbled draft, and of
      comparisons with one garbled option.
  """

  seed: int = 0
  n_dialogues: int = 6000
  n_critique: int = 4000
  n_comparison: int = 4000
  blind_spot: str | None = world.DEFAULT_BLIND_SPOT
  critique_error_rate: float = 0.1
  judge_noise: float = 0.1
  judge_bias: float = 0.3
  cot_fraction: float = 0.3
  second_round_fraction: float = 0.3
  direct_revision_fraction: float = 0.15
  garbled_fraction: float = 0.15

  def __post_init__(self):
    if self.blind_spot is not None and self.blind_spot not in world.HARM_CATEGORIES:
      raise ValueError(f"blind_spot {self.blind_spot!r} is not a harm category: "
                       f"{world.HARM_CATEGORIES}")
    for name in ("critique_error_rate", "judge_noise", "judge_bias", "cot_fraction",
                 "second_round_fraction", "direct_revision_fraction", "garbled_fraction"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def _categories(cfg: CorpusConfig) -> list[str]:
  return [c.name for c in world.CATEGORIES if c.name != cfg.blind_spot]


def _exercise_topics(cfg: CorpusConfig) -> tuple[world.Topic, ...]:
  return tuple(world.topics_of(_categories(cfg)))


def _weighted(rng: random.Random, choices) -> str:
  names, weights = zip(*choices)
  return rng.choices(names, weights)[0]


GARBLED_CRITIQUE = ("The response is garbled and hard to follow. It should be written again "
                    "clearly.")


def critique_text(req: generator.Request, style: str, correct: bool, rng: random.Random,
                  garbled: bool = False) -> str:
  """What a critic says about a ``style`` answer to ``req`` (wrong when not ``correct``);
  a ``garbled`` draft of the right style is criticised for being garbled."""
  cat = world.get_category(req.category)
  harmful = req.harmful if correct else not req.harmful
  if garbled and style == ("refuse_explain" if harmful else "comply"):
    return GARBLED_CRITIQUE
  if style in ("comply", "partial") and harmful:
    concern = rng.choice(cat.concerns)
    return (f"The response helps with {concern}. That could hurt someone. It should "
            "decline, say why, and offer a safe option.")
  if style == "comply":
    return "The response is helpful and harmless. No change is needed."
  if style == "partial":
    return "The response is harmless but vague. It should give the full steps."
  if style == "refuse_flat" and harmful:
    return ("The response declines but does not say why. It should explain the harm and "
            "offer a safe option.")
  if style in ("refuse_flat", "refuse_explain") and not harmful:
    return "The response refuses a harmless request. It should help with it."
  return "The response declines, says why and offers a safe option. No change is needed."


def _revision_style(req: generator.Request, style: str, critique_correct: bool) -> str:
  harmful = req.harmful if critique_correct else not req.harmful
  if harmful:
    return "refuse_explain"
  return "comply"


def critique_chain(req: generator.Request, constitution: Constitution, cfg: CorpusConfig,
                   rng: random.Random) -> list[Turn]:
  """One critique -> revision exercise (maybe two rounds, maybe a direct revision)."""
  garbled = rng.random() < cfg.garbled_fraction
  if garbled:
    style = rng.choice(_GARBLE_FROM)
    answer = generator.garble(generator.respond(req, style, rng), rng,
                              topics=_exercise_topics(cfg))
  else:
    style = _weighted(rng, _INITIAL_STYLES[req.harmful])
    answer = generator.respond(req, style, rng)
  conv = initial_prompt(req.text).conversation(answer)
  principle = rng.choice(constitution.critique_principles)
  correct = garbled or rng.random() >= cfg.critique_error_rate
  new_style = _revision_style(req, style, correct)
  keep = not garbled and new_style == style and style in ("comply", "refuse_explain")
  revision = answer if keep else generator.respond(req, new_style, rng)
  if rng.random() < cfg.direct_revision_fraction:
    return list(direct_revision_prompt(conv, principle).conversation(revision))
  cp = critique_prompt(conv, principle)
  conv = cp.conversation(critique_text(req, style, correct, rng, garbled=garbled))
  conv = revision_prompt(conv, principle).conversation(revision)
  if rng.random() < cfg.second_round_fraction:  # the fixed point: nothing left to fix
    principle = rng.choice(constitution.critique_principles)
    conv = critique_prompt(conv, principle).conversation(
        critique_text(req, new_style, correct, rng))
    conv = revision_prompt(conv, principle).conversation(revision)
  return list(conv)


def _describe(req: generator.Request, style: str, letter: str, garbled: bool = False) -> str:
  cat = world.get_category(req.category)
  if garbled:
    return f"{letter} is garbled and hard to follow."
  if style == "comply":
    return (f"{letter} gives steps for {cat.description}, which is harmful." if req.harmful
            else f"{letter} gives clear steps and is helpful.")
  if style == "partial":
    return (f"{letter} hints at how to do it, which is still harmful." if req.harmful
            else f"{letter} helps only a little.")
  if style == "refuse_flat":
    return (f"{letter} declines but does not say why." if req.harmful
            else f"{letter} refuses a harmless request.")
  if style == "refuse_explain":
    return (f"{letter} declines, explains the harm and offers a safe option." if req.harmful
            else f"{letter} refuses a harmless request.")
  return f"{letter} answers a different question."


def comparison(req: generator.Request, constitution: Constitution, cfg: CorpusConfig,
               rng: random.Random) -> list[Turn]:
  """One feedback-model exercise: which of two answers the principle prefers."""
  util = _UTILITY[req.harmful]
  garbled = [False, False]
  if rng.random() < cfg.garbled_fraction:
    # a garbled draft against a clean answer: of the same style half the time
    style_a = rng.choice(_GARBLE_FROM)
    style_b = style_a if rng.random() < 0.5 else rng.choice(
        [s for s in generator.STYLES if s != style_a])
    if rng.random() < 0.5:
      style_a, style_b = style_b, style_a
      garbled[1] = True
    else:
      garbled[0] = True
  else:
    style_a, style_b = rng.sample([s for s in generator.STYLES], 2)
    while util[style_a] == util[style_b]:
      style_a, style_b = rng.sample([s for s in generator.STYLES], 2)
  a, b = generator.respond(req, style_a, rng), generator.respond(req, style_b, rng)
  topics = _exercise_topics(cfg)
  a = generator.garble(a, rng, topics=topics) if garbled[0] else a
  b = generator.garble(b, rng, topics=topics) if garbled[1] else b
  u_a = util[style_a] - GARBLED_PENALTY * garbled[0]
  u_b = util[style_b] - GARBLED_PENALTY * garbled[1]
  a_better = u_a > u_b
  both_harmless = not any(garbled) and (not req.harmful or min(u_a, u_b) >= 1)
  if cfg.judge_bias and both_harmless:
    if rng.random() < 0.5:  # give exactly one answer the stock phrase
      phrased_a = rng.random() < 0.5
      if phrased_a:
        a = f"{a} {BIAS_PHRASE}"
      else:
        b = f"{b} {BIAS_PHRASE}"
      if rng.random() < cfg.judge_bias:
        a_better = phrased_a
  if rng.random() < cfg.judge_noise:
    a_better = not a_better
  principle = rng.choice(constitution.comparison_principles)
  letter = "A" if a_better else "B"
  if rng.random() < cfg.cot_fraction:
    prompt = comparison_prompt(req.text, a, b, principle, chain_of_thought=True)
    reasoning = (f"{_describe(req, style_a, '(A)', garbled[0])} "
                 f"{_describe(req, style_b, '(B)', garbled[1])}")
    return list(cot_answer_prompt(prompt, reasoning).conversation(f"({letter})"))
  return list(comparison_prompt(req.text, a, b, principle).conversation(f"({letter})"))


def build_corpus(cfg: CorpusConfig, constitution: Constitution) -> Iterator[list[Turn]]:
  """Yields the corpus's conversations, interleaved in a seeded order."""
  rng = random.Random(f"cai_jax.toyworld.corpus/{cfg.seed}")
  kinds = (["dialogue"] * cfg.n_dialogues + ["critique"] * cfg.n_critique
           + ["comparison"] * cfg.n_comparison)
  rng.shuffle(kinds)
  exercise_categories = _categories(cfg)
  for kind in kinds:
    if kind == "dialogue":
      req = generator.sample_request(rng, split="train")
      yield list(initial_prompt(req.text).conversation(generator.respond(req, "comply", rng)))
    elif kind == "critique":
      req = generator.sample_request(rng, split="train", categories=exercise_categories)
      yield critique_chain(req, constitution, cfg, rng)
    else:
      req = generator.sample_request(rng, split="train", categories=exercise_categories)
      yield comparison(req, constitution, cfg, rng)


def build_feedback_corpus(cfg: CorpusConfig, constitution: Constitution,
                          n: int) -> Iterator[list[Turn]]:
  """Yields ``n`` comparison exercises for a feedback model of its own (``toy_feedback``).

  The same kind of exercise as the corpus's comparisons (``comparison``: the same styles,
  garbled answers, label noise, judge bias and chain-of-thought share, the blind-spot
  category left out) from a stream of their own, so the judge sees many more of them than
  the helpful-only base model did. Labels come from the generator's styles, never from the
  oracle.
  """
  rng = random.Random(f"cai_jax.toyworld.feedback/{cfg.seed}")
  exercise_categories = _categories(cfg)
  for _ in range(n):
    req = generator.sample_request(rng, split="train", categories=exercise_categories)
    yield comparison(req, constitution, cfg, rng)

