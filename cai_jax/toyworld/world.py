"""The toy world's content: categories, topics, and their step vocabulary.

The world is a fixed, ordered list of categories. Each category is benign (cooking, repair,
...) or a harm category (break_in, poison, ...) and holds six topics. A topic is one thing a
user can ask for: a few synonymous first-person *tasks* ("bake a loaf of bread"), the
concrete *steps* a complying answer gives, in order, and (for every topic) safe
*alternatives* a refusal can offer instead.

Order is part of the world's definition: ``Topic.index`` (the topic's position in
``TOPICS``) fixes the train / eval split (``generator.is_eval_combo``), and
``HARM_CATEGORIES`` is the documented order of the harm categories, from which a
configuration picks the blind-spot category by name (``DEFAULT_BLIND_SPOT`` is the
conventional choice). Appending content is safe for the split of existing topics only if
new topics go at the end.

The raw text lives in ``_benign.py`` and ``_harm.py``; this module turns it into frozen
dataclasses and offers look-ups.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from cai_jax.toyworld._benign import BENIGN
from cai_jax.toyworld._harm import HARM

_SECOND_PERSON = {"i": "you", "my": "your", "me": "you", "mine": "yours", "myself": "yourself",
                  "am": "are"}


def second_person(text: str) -> str:
  """Rewrites a first-person task ("fix my chair") into the second person ("fix your chair").

  Args:
    text: a first-person phrase, as in the world's tasks.

  Returns:
    The phrase with I/my/me/mine/myself/am replaced, other words untouched.
  """
  def swap(m: re.Match) -> str:
    word = m.group(0)
    return _SECOND_PERSON.get(word.lower(), word)
  return re.sub(r"[A-Za-z]+", swap, text)


@dataclasses.dataclass(frozen=True)
class Topic:
  """One thing a user can ask for.

  Attributes:
    key: unique name, e.g. ``"bread"`` or ``"neighbour_door"``.
    category: the name of the topic's category.
    harmful: whether the category is a harm category.
    index: position in ``TOPICS`` (fixes the train / eval split).
    tasks: synonymous first-person verb phrases ("bake a loaf of bread").
    steps: the concrete steps of a complying answer, in order (lower case, no period).
    alternatives: safe second-person verb phrases a good refusal offers instead; for a
      benign topic they come from the category's template, one per task.
  """

  key: str
  category: str
  harmful: bool
  index: int
  tasks: tuple[str, ...]
  steps: tuple[str, ...]
  alternatives: tuple[str, ...]

  @property
  def response_tasks(self) -> tuple[str, ...]:
    """The tasks in the second person, as an answer phrases them ("fix your chair")."""
    return tuple(second_person(t) for t in self.tasks)


@dataclasses.dataclass(frozen=True)
class Category:
  """A group of topics that share a harm (or a harmless domain).

  Attributes:
    name: unique name, e.g. ``"cooking"`` or ``"break_in"``.
    harmful: whether requests of this category are harmful.
    description: a short phrase describing the category.
    concerns: the reason phrases a refusal of this category gives ("entering a home that is
      not yours"). For a harm category they name the true harm; for a benign one they are
      the spurious worry of an over-cautious assistant.
    contexts: optional phrases a request may append to its task (" tonight").
    topics: the category's topics, in order.
  """

  name: str
  harmful: bool
  description: str
  concerns: tuple[str, ...]
  contexts: tuple[str, ...]
  topics: tuple[Topic, ...]


def _build() -> tuple[Category, ...]:
  cats = []
  index = 0
  for harmful, table in ((False, BENIGN), (True, HARM)):
    for name, raw in table.items():
      topics = []
      for key, entry in raw["topics"].items():
        if harmful:
          tasks, steps, alternatives = entry
        else:
          tasks, steps = entry
          alternatives = tuple(raw["alternative"].format(task=second_person(t)) for t in tasks)
        topics.append(Topic(key=key, category=name, harmful=harmful, index=index,
                            tasks=tuple(tasks), steps=tuple(steps),
                            alternatives=tuple(alternatives)))
        index += 1
      cats.append(Category(name=name, harmful=harmful, description=raw["description"],
                           concerns=tuple(raw["concerns"]), contexts=tuple(raw["contexts"]),
                           topics=tuple(topics)))
  return tuple(cats)


CATEGORIES: tuple[Category, ...] = _build()
"""Every category, benign ones first, in the world's fixed order."""

BENIGN_CATEGORIES: tuple[str, ...] = tuple(c.name for c in CATEGORIES if not c.harmful)
"""Names of the benign categories: cooking, repair, travel, study, gardening, fitness."""

HARM_CATEGORIES: tuple[str, ...] = tuple(c.name for c in CATEGORIES if c.harmful)
"""Names of the harm categories, in their documented order: ``break_in`` (entering a home
that is not yours), ``poison`` (making a dangerous substance), ``violence`` (hurting a
person), ``harassment`` (harassing or demeaning a group), ``privacy`` (taking someone's
private data). Any one of them can be the blind spot."""

DEFAULT_BLIND_SPOT: str = HARM_CATEGORIES[-1]
"""The conventional blind-spot category (``"privacy"``, the last harm category)."""

TOPICS: tuple[Topic, ...] = tuple(t for c in CATEGORIES for t in c.topics)
"""Every topic, in category order; ``TOPICS[i].index == i``."""

_CATEGORY_BY_NAME = {c.name: c for c in CATEGORIES}
_TOPIC_BY_KEY = {t.key: t for t in TOPICS}


def get_category(name: str) -> Category:
  """Returns the category called ``name``.

  Raises:
    KeyError: for an unknown name (the message lists the known ones).
  """
  try:
    return _CATEGORY_BY_NAME[name]
  except KeyError:
    raise KeyError(f"unknown toy-world category {name!r}; known: "
                   f"{sorted(_CATEGORY_BY_NAME)}") from None


def get_topic(key: str) -> Topic:
  """Returns the topic whose key is ``key``.

  Raises:
    KeyError: for an unknown key.
  """
  try:
    return _TOPIC_BY_KEY[key]
  except KeyError:
    raise KeyError(f"unknown toy-world topic {key!r}") from None


def topics_of(categories: str | Sequence[str] | None = None, *,
              harmful: bool | None = None) -> tuple[Topic, ...]:
  """Topics filtered by category and/or harmfulness, in world order.

  Args:
    categories: a category name or several; ``None`` for all.
    harmful: keep only harmful (True) or benign (False) topics; ``None`` for both.

  Returns:
    The matching topics (possibly empty).
  """
  if isinstance(categories, str):
    categories = (categories,)
  if categories is not None:
    for name in categories:
      get_category(name)  # Validates the name.
    wanted = set(categories)
  out = []
  for t in TOPICS:
    if categories is not None and t.category not in wanted:
      continue
    if harmful is not None and t.harmful != harmful:
      continue
    out.append(t)
  return tuple(out)
