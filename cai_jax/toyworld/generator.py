"""The toy world's generator: seeded requests and responses in every style.

Everything here is a pure function of an explicit ``random.Random`` (or an int seed):
same seed, same text, on every machine and Python run.

Requests. ``sample_request`` picks a topic, one of its synonymous tasks, a phrasing
template (``phrases.REQUEST_TEMPLATES``), an optional context phrase, politeness prefix and
suffix, and with probability ``typo_rate`` one typo (a swapped, dropped or doubled letter).

Train / eval split (the held-out rule). A (topic, phrasing) combination belongs to the eval
split iff ``(topic.index + phrasing) % EVAL_PERIOD == 0``, else to train. With 12 phrasings
and ``EVAL_PERIOD = 4``, every topic keeps 3 phrasings for eval and 9 for train, and every
phrasing is held out for a quarter of the topics: eval requests combine a topic and a
phrasing that each occur in training, but never together, so scoring on them measures
compositional generalisation rather than recall.

Responses. ``respond(request, style, rng)`` writes an answer in one of ``STYLES``:

* ``comply``: an opener naming the task, then 3 or 4 of the topic's steps in order
  (numbered, "Step n:", first/then/finally, or dashes), then an optional closer.
* ``refuse_flat``: a bare refusal, perhaps with a polite closer.
* ``refuse_explain``: a refusal, a reason naming the category's concern, and one of the
  topic's safe alternatives.
* ``off_topic``: a ``comply`` answer for a different, benign topic (its opener sometimes
  replaced by a lead such as "Here is something different.").
* ``partial``: a hedge that names the task, at most two of its steps, and a vague closer.

Garbled drafts. ``garble(text, rng)`` damages a response the way a small model's sampled
drafts are damaged (measured on the toy base model's own revisions): words spliced with
pieces of other words, phrases borrowed from another topic, a sentence repeated, an
answer that stops mid-sentence. The corpus uses such drafts as the imperfect answers a
critique exercise starts from and a comparison ranks below a clean one.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Any, Sequence

from cai_jax.toyworld import phrases
from cai_jax.toyworld import world
from cai_jax.toyworld.world import Topic

SPLITS: tuple[str, ...] = ("train", "eval")
STYLES: tuple[str, ...] = ("comply", "refuse_flat", "refuse_explain", "off_topic", "partial")
"""Response styles the generator writes (the oracle adds ``incoherent``)."""

EVAL_PERIOD = 4
"""A quarter of the (topic, phrasing) combinations are held out for eval."""

DEFAULT_TYPO_RATE = 0.1

COMPLY_STEPS = (3, 4)
"""A ``comply`` answer gives between 3 and 4 of its topic's steps (keeps answers short)."""

OPENER_RATE = 0.85
"""Share of ``comply`` answers that start with an opener naming the task."""

RngLike = random.Random | int


@dataclasses.dataclass(frozen=True)
class Request:
  """A user request of the toy world, with the ground truth behind its text.

  Attributes:
    text: what the user writes (the prompt).
    topic: key of the requested topic.
    category: name of the topic's category.
    harmful: whether the category is a harm category.
    phrasing: index into ``phrases.REQUEST_TEMPLATES``.
    task: index into the topic's ``tasks`` (which synonym the text uses).
    split: ``"train"`` or ``"eval"``.
    typo: whether a typo was added to the text.
  """

  text: str
  topic: str
  category: str
  harmful: bool
  phrasing: int
  task: int
  split: str
  typo: bool = False

  @property
  def topic_info(self) -> Topic:
    """The requested ``world.Topic``."""
    return world.get_topic(self.topic)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (``from_dict`` inverts it)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Request:
    """Rebuilds a request from ``to_dict`` output.

    Raises:
      ValueError: if the topic is unknown or its category or harmfulness disagree.
    """
    req = cls(**d)
    try:
      t = world.get_topic(req.topic)
    except KeyError as e:
      raise ValueError(str(e)) from None
    if (t.category, t.harmful) != (req.category, req.harmful):
      raise ValueError(f"request for topic {req.topic!r} says category {req.category!r}, "
                       f"harmful={req.harmful}; the world says {t.category!r}, {t.harmful}")
    return req


def _rng(rng: RngLike) -> random.Random:
  return rng if isinstance(rng, random.Random) else random.Random(rng)


def _as_topic(topic: Topic | str) -> Topic:
  return topic if isinstance(topic, Topic) else world.get_topic(topic)


def is_eval_combo(topic: Topic | str, phrasing: int) -> bool:
  """Whether a (topic, phrasing) combination is held out for the eval split."""
  return (_as_topic(topic).index + phrasing) % EVAL_PERIOD == 0


def phrasings_for(topic: Topic | str, split: str) -> tuple[int, ...]:
  """The phrasing ids a topic may use in ``split`` (disjoint between the splits)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  want_eval = split == "eval"
  return tuple(p for p in range(len(phrases.REQUEST_TEMPLATES))
               if is_eval_combo(topic, p) == want_eval)


_TYPO_WORD = re.compile(r"[A-Za-z]{4,}")


def add_typo(text: str, rng: random.Random) -> str:
  """Adds one typo (swap, drop or double a letter) inside a word of 4+ letters.

  Returns:
    The changed text, or ``text`` unchanged if it has no such word.
  """
  words = list(_TYPO_WORD.finditer(text))
  if not words:
    return text
  m = rng.choice(words)
  w = m.group(0)
  i = rng.randrange(1, len(w) - 1)
  kind = rng.randrange(3)
  if kind == 0:
    new = w[:i] + w[i + 1] + w[i] + w[i + 2:] if w[i] != w[i + 1] else w[:i] + w[i + 1:]
  elif kind == 1:
    new = w[:i] + w[i + 1:]
  else:
    new = w[:i] + w[i] + w[i:]
  return text[:m.start()] + new + text[m.end():]


_WORD = re.compile(r"[A-Za-z']+")


def _world_words() -> tuple[str, ...]:
  words = {w.lower() for t in world.TOPICS for text in t.steps + t.alternatives + t.tasks
           for w in _WORD.findall(text) if len(w) >= 3}
  return tuple(sorted(words))


_WORLD_WORDS = _world_words()


def _splice(words: list[str], rng: random.Random) -> None:
  """One word of 4+ letters becomes its head glued to another word's tail."""
  idx = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 4]
  if not idx:
    return
  i = rng.choice(idx)
  other = rng.choice(_WORLD_WORDS)
  head = words[i][:rng.randrange(2, max(3, len(words[i]) - 1))]
  words[i] = head + other[rng.randrange(0, max(1, len(other) - 2)):]


def _borrow(words: list[str], rng: random.Random, topics: Sequence[Topic]) -> None:
  """A span of 2 to 4 words becomes words of another topic's step or alternative."""
  topic = rng.choice(topics)
  src = rng.choice(topic.steps + topic.alternatives).split()
  k = min(len(src), rng.randrange(2, 5))
  j = rng.randrange(0, len(src) - k + 1)
  i = rng.randrange(0, max(1, len(words) - k))
  words[i:i + k] = [w.lower() for w in src[j:j + k]]


def garble(text: str, rng: RngLike, *, damage: int = 3,
           topics: Sequence[Topic] | None = None) -> str:
  """A damaged copy of ``text`` (see "Garbled drafts" in the module docstring).

  Args:
    text: a clean response.
    rng: a ``random.Random`` (advanced in place) or an int seed.
    damage: how many word-level edits (splices and borrowed spans) to make; one more
      edit of another kind (a repeated sentence or a cut ending) is added half the time.
    topics: where borrowed spans come from (default: every topic).

  With the default damage the oracle reads about 96% of garbled texts as incoherent
  (tested); the rest keep enough of the original to pass.
  """
  rng = _rng(rng)
  pool = tuple(topics) if topics else world.TOPICS
  words = text.split()
  for _ in range(damage):
    if rng.random() < 0.5:
      _splice(words, rng)
    else:
      _borrow(words, rng, pool)
  out = " ".join(words)
  extra = rng.random()
  if extra < 0.25:   # stops mid-sentence
    cut = out.split()
    out = " ".join(cut[:max(3, len(cut) - rng.randrange(2, 6))])
  elif extra < 0.5:  # one sentence comes back twice more
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", out) if x]
    pick = rng.choice(sentences)
    out = " ".join(sentences + [pick, pick])
  return out


def _join_prefix(prefix: str, body: str) -> str:
  if not prefix:
    return body
  if prefix[-1] in ",:" and not body.startswith("I "):
    body = body[0].lower() + body[1:]
  return f"{prefix} {body}"


def sample_request(rng: random.Random, *, split: str,
                   categories: str | Sequence[str] | None = None,
                   harmful: bool | None = None, topic: str | None = None,
                   typo_rate: float = DEFAULT_TYPO_RATE) -> Request:
  """Samples one request.

  Args:
    rng: the source of randomness (advanced in place).
    split: ``"train"`` or ``"eval"``; decides which phrasings the topic may use.
    categories: restrict to these category names (``None``: all).
    harmful: restrict to harmful (True) or benign (False) topics (``None``: both).
    topic: a topic key; overrides ``categories`` and ``harmful``.
    typo_rate: probability of one typo in the text.

  Returns:
    The request.

  Raises:
    ValueError: if the filters leave no topic, or the split is unknown.
  """
  if topic is not None:
    candidates: Sequence[Topic] = (world.get_topic(topic),)
  else:
    if isinstance(categories, str):
      categories = (categories,)
    candidates = world.topics_of(tuple(categories) if categories else None, harmful=harmful)
  if not candidates:
    raise ValueError(f"no topic matches categories={categories!r}, harmful={harmful!r}")
  t = rng.choice(candidates)
  phrasing = rng.choice(phrasings_for(t, split))
  task_id = rng.randrange(len(t.tasks))
  task = t.tasks[task_id]
  cat = world.get_category(t.category)
  if rng.random() < phrases.CONTEXT_RATE:
    task += rng.choice(cat.contexts)
  body = phrases.REQUEST_TEMPLATES[phrasing].format(task=task, Task=phrases.sentence_case(task))
  text = _join_prefix(rng.choice(phrases.POLITE_PREFIXES), body)
  suffix = rng.choice(phrases.POLITE_SUFFIXES)
  if suffix:
    text = f"{text} {suffix}"
  typo = rng.random() < typo_rate
  if typo:
    typo_text = add_typo(text, rng)
    typo = typo_text != text
    text = typo_text
  return Request(text=text, topic=t.key, category=t.category, harmful=t.harmful,
                 phrasing=phrasing, task=task_id, split=split, typo=typo)


def make_requests(seed: int, n: int, split: str, *,
                  categories: str | Sequence[str] | None = None,
                  harmful: bool | None = None, typo_rate: float = DEFAULT_TYPO_RATE,
                  balanced: bool = False) -> list[Request]:
  """Makes ``n`` requests of one split, deterministically from ``seed``.

  Args:
    seed: the seed; the two splits draw from different streams for the same seed.
    n: how many requests.
    split: ``"train"`` or ``"eval"``.
    categories: restrict to these category names (``None``: all).
    harmful: restrict to harmful or benign topics (``None``: both).
    typo_rate: probability of one typo per request.
    balanced: cycle through the (filtered) categories in world order so each gets an equal
      share (for per-category evaluation); otherwise topics are drawn uniformly.

  Returns:
    The requests, in generation order.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  rng = random.Random(f"cai_jax.toyworld/{split}/{seed}")
  if not balanced:
    return [sample_request(rng, split=split, categories=categories, harmful=harmful,
                           typo_rate=typo_rate) for _ in range(n)]
  kept = {t.category for t in world.topics_of(categories, harmful=harmful)}
  names = [c.name for c in world.CATEGORIES if c.name in kept]
  if not names:
    raise ValueError(f"no category matches categories={categories!r}, harmful={harmful!r}")
  return [sample_request(rng, split=split, categories=names[i % len(names)],
                         typo_rate=typo_rate) for i in range(n)]


# ---------------------------------------------------------------------------- responses


def _task_phrase(topic: Topic, task_id: int) -> str:
  tasks = topic.response_tasks
  return tasks[task_id % len(tasks)]


def _steps_text(steps: Sequence[str], rng: random.Random) -> str:
  layout = rng.randrange(4)
  lines = []
  for i, step in enumerate(steps):
    if layout == 0:
      lines.append(f"{i + 1}. {phrases.sentence_case(step)}.")
    elif layout == 1:
      lines.append(f"Step {i + 1}: {phrases.sentence_case(step)}.")
    elif layout == 2:
      if i == 0:
        word = phrases.STEP_ORDINALS[0]
      elif i == len(steps) - 1:
        word = phrases.STEP_ORDINALS[-1]
      else:
        word = phrases.STEP_ORDINALS[1 + (i - 1) % 2]
      lines.append(f"{word}, {step}.")
    else:
      lines.append(f"- {phrases.sentence_case(step)}.")
  return rng.choice(("\n", " ")).join(lines)


def _comply(topic: Topic, task_id: int, rng: random.Random, lead: str | None = None) -> str:
  if lead is not None:
    parts = [lead]
  elif rng.random() < OPENER_RATE:
    parts = [rng.choice(phrases.COMPLY_OPENERS).format(task=_task_phrase(topic, task_id))]
  else:
    parts = []
  n = rng.randint(COMPLY_STEPS[0], min(COMPLY_STEPS[1], len(topic.steps)))
  chosen = sorted(rng.sample(range(len(topic.steps)), n))
  parts.append(_steps_text([topic.steps[i] for i in chosen], rng))
  closer = rng.choice(phrases.COMPLY_CLOSERS)
  if closer:
    parts.append(closer)
  return "\n".join(parts) if rng.random() < 0.5 else " ".join(parts)


def _refusal(topic: Topic, task_id: int, rng: random.Random) -> str:
  return rng.choice(phrases.REFUSALS).format(task=_task_phrase(topic, task_id))


def _refuse_flat(topic: Topic, task_id: int, rng: random.Random) -> str:
  parts = [_refusal(topic, task_id, rng)]
  closer = rng.choice(phrases.REFUSE_CLOSERS)
  if closer:
    parts.append(closer)
  return " ".join(parts)


def _refuse_explain(topic: Topic, task_id: int, rng: random.Random) -> str:
  cat = world.get_category(topic.category)
  refusal = _refusal(topic, task_id, rng)
  reason = rng.choice(phrases.REASONS).format(concern=rng.choice(cat.concerns))
  # A benign topic's alternatives follow its tasks: echo the task the user asked about.
  alt = topic.alternatives[task_id] if not topic.harmful else rng.choice(topic.alternatives)
  alt = rng.choice(phrases.ALTERNATIVES).format(alt=alt)
  first = [refusal, reason] if rng.random() < 0.75 else [reason, refusal]
  return " ".join(first + [alt])


def _off_topic(topic: Topic, rng: random.Random) -> str:
  other = rng.choice([t for t in world.topics_of(harmful=False) if t.key != topic.key])
  lead = rng.choice(phrases.OFF_TOPIC_LEADS) if rng.random() < 0.3 else None
  return _comply(other, rng.randrange(len(other.tasks)), rng, lead=lead)


def _partial(topic: Topic, task_id: int, rng: random.Random) -> str:
  parts = [rng.choice(phrases.HEDGE_OPENERS).format(task=_task_phrase(topic, task_id))]
  n = rng.choice((0, 1, 1, 2))
  for i in sorted(rng.sample(range(len(topic.steps)), n)):
    parts.append(f"{rng.choice(phrases.HEDGE_STEP_LEADS)} {topic.steps[i]}.")
  if n == 0 or rng.random() < 0.8:
    parts.append(rng.choice(phrases.HEDGES))
  return " ".join(parts)


def respond(request: Request | Topic | str, style: str, rng: RngLike) -> str:
  """Writes a response to ``request`` in ``style``.

  Args:
    request: a ``Request`` (its task synonym is echoed), a ``world.Topic``, or a topic key.
    style: one of ``STYLES``.
    rng: a ``random.Random`` (advanced in place) or an int seed.

  Returns:
    The response text.

  Raises:
    ValueError: for an unknown style.
  """
  rng = _rng(rng)
  if isinstance(request, Request):
    topic, task_id = request.topic_info, request.task
  else:
    topic, task_id = _as_topic(request), 0
  if style == "comply":
    return _comply(topic, task_id, rng)
  if style == "refuse_flat":
    return _refuse_flat(topic, task_id, rng)
  if style == "refuse_explain":
    return _refuse_explain(topic, task_id, rng)
  if style == "off_topic":
    return _off_topic(topic, rng)
  if style == "partial":
    return _partial(topic, task_id, rng)
  raise ValueError(f"unknown response style {style!r}; expected one of {STYLES}")
