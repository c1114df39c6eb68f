"""The toy world's content and generator: shape, determinism, held-out split, styles."""
import collections
import random
import re

import pytest

from cai_jax import toyworld as tw
from cai_jax.toyworld import phrases


def _norm(text):
  return " ".join(phrases.normalize_tokens(text))


def _steps_in(text, topic):
  """Indices of ``topic``'s steps that occur in ``text``, in text order."""
  norm = f" {_norm(text)} "
  found = [(norm.find(f" {_norm(s)} "), i) for i, s in enumerate(topic.steps)]
  return [i for pos, i in sorted(found) if pos >= 0]


# ---------------------------------------------------------------------------- the world


def test_world_has_enough_categories_topics_and_steps():
  assert len(tw.BENIGN_CATEGORIES) >= 6
  assert tw.HARM_CATEGORIES == ("break_in", "poison", "violence", "harassment", "privacy")
  assert tw.DEFAULT_BLIND_SPOT in tw.HARM_CATEGORIES
  for cat in tw.CATEGORIES:
    assert cat.harmful == (cat.name in tw.HARM_CATEGORIES)
    assert len(cat.topics) >= 6 and cat.concerns and cat.contexts
    for t in cat.topics:
      assert t.category == cat.name and t.harmful == cat.harmful
      assert len(t.tasks) >= 3 and len(t.steps) >= 4 and len(t.alternatives) >= 2
  assert [t.index for t in tw.TOPICS] == list(range(len(tw.TOPICS)))


def test_keys_tasks_and_steps_are_unique_across_the_world():
  for values in ([t.key for t in tw.TOPICS],
                 [s for t in tw.TOPICS for s in t.steps],
                 [_norm(s) for t in tw.TOPICS for s in t.tasks],
                 [_norm(s) for t in tw.TOPICS for s in t.alternatives]):
    dupes = [v for v, n in collections.Counter(values).items() if n > 1]
    assert not dupes


def test_lookups_and_filters():
  assert tw.get_topic("bread").category == "cooking"
  assert tw.get_category("poison").harmful
  assert {t.category for t in tw.topics_of("privacy")} == {"privacy"}
  assert all(t.harmful for t in tw.topics_of(harmful=True))
  assert len(tw.topics_of(("cooking", "privacy"), harmful=False)) == 6
  with pytest.raises(KeyError, match="known"):
    tw.get_category("cookery")
  with pytest.raises(KeyError):
    tw.get_topic("nope")
  with pytest.raises(KeyError):
    tw.topics_of("nope")


def test_second_person():
  assert tw.second_person("fix my chair") == "fix your chair"
  assert tw.second_person("a house I do not own") == "a house you do not own"
  assert tw.second_person("hurt the driver who cut me off") == "hurt the driver who cut you off"
  assert tw.second_person("mystery minecraft") == "mystery minecraft"


def test_there_are_at_least_eight_phrasings():
  assert len(phrases.REQUEST_TEMPLATES) >= 8
  assert all(("{task}" in p) != ("{Task}" in p) for p in phrases.REQUEST_TEMPLATES)


# ----------------------------------------------------------------------------- requests


def test_requests_are_deterministic_under_a_seed():
  a = tw.make_requests(7, 300, "train")
  assert a == tw.make_requests(7, 300, "train")
  assert a != tw.make_requests(8, 300, "train")
  r1 = tw.sample_request(random.Random(3), split="eval")
  assert r1 == tw.sample_request(random.Random(3), split="eval")


def test_split_rule_is_disjoint_and_covers_every_topic_and_phrasing():
  n_phrasings = len(phrases.REQUEST_TEMPLATES)
  for t in tw.TOPICS:
    train, held = set(tw.phrasings_for(t, "train")), set(tw.phrasings_for(t, "eval"))
    assert train and held and not train & held
    assert train | held == set(range(n_phrasings))
    assert all(tw.is_eval_combo(t.key, p) for p in held)
  for p in range(n_phrasings):  # Every phrasing is seen in training for most topics.
    assert 0 < sum(tw.is_eval_combo(t, p) for t in tw.TOPICS) < len(tw.TOPICS) / 2
  with pytest.raises(ValueError, match="split"):
    tw.phrasings_for("bread", "test")


def test_eval_requests_are_held_out_from_training():
  train = tw.make_requests(0, 3000, "train")
  held = tw.make_requests(0, 1500, "eval")
  assert {r.split for r in train} == {"train"} and {r.split for r in held} == {"eval"}
  train_combos = {(r.topic, r.phrasing) for r in train}
  eval_combos = {(r.topic, r.phrasing) for r in held}
  assert not train_combos & eval_combos
  assert {t for t, _ in eval_combos} == {t.key for t in tw.TOPICS}
  # Eval texts are new sentences, not copies of training texts.
  assert not {r.text for r in train} & {r.text for r in held}


def test_request_fields_match_the_world_and_text_names_the_task():
  for r in tw.make_requests(1, 500, "train", typo_rate=0.0):
    t = tw.get_topic(r.topic)
    assert (r.category, r.harmful) == (t.category, t.harmful)
    assert not r.typo
    assert _norm(t.tasks[r.task]) in _norm(r.text)


def test_requests_vary_in_surface_form():
  reqs = tw.make_requests(2, 2000, "train")
  assert len({r.phrasing for r in reqs}) == len(phrases.REQUEST_TEMPLATES)
  assert len({r.text for r in reqs}) > 1900
  starts = collections.Counter(r.text.split()[0] for r in reqs)
  assert len(starts) > 15
  typo_share = sum(r.typo for r in reqs) / len(reqs)
  assert 0.05 < typo_share < 0.15
  assert all(len(r.text.split()) <= 30 for r in reqs)


def test_add_typo_changes_one_word():
  rng = random.Random(0)
  text = "How do I bake a loaf of bread?"
  for _ in range(50):
    out = tw.add_typo(text, rng)
    diff = [(a, b) for a, b in zip(text.split(), out.split()) if a != b]
    assert len(out.split()) == len(text.split()) and len(diff) == 1
  assert tw.add_typo("a b c", rng) == "a b c"


def test_filters_and_balanced_requests():
  reqs = tw.make_requests(0, 110, "eval", balanced=True)
  counts = collections.Counter(r.category for r in reqs)
  assert set(counts) == {c.name for c in tw.CATEGORIES} and set(counts.values()) == {10}
  assert all(r.harmful for r in tw.make_requests(0, 50, "train", harmful=True))
  only = tw.make_requests(0, 40, "train", categories="privacy", balanced=True)
  assert {r.category for r in only} == {"privacy"}
  rng = random.Random(0)
  assert tw.sample_request(rng, split="eval", topic="bread").topic == "bread"
  with pytest.raises(ValueError, match="no topic"):
    tw.sample_request(rng, split="eval", categories="cooking", harmful=True)
  with pytest.raises(ValueError, match="split"):
    tw.make_requests(0, 3, "dev")


def test_request_dict_round_trip():
  r = tw.make_requests(4, 1, "eval")[0]
  assert tw.Request.from_dict(r.to_dict()) == r
  bad = dict(r.to_dict(), harmful=not r.harmful)
  with pytest.raises(ValueError, match="world says"):
    tw.Request.from_dict(bad)
  with pytest.raises(ValueError, match="unknown"):
    tw.Request.from_dict(dict(r.to_dict(), topic="nope"))


# ---------------------------------------------------------------------------- responses


def test_responses_are_deterministic_under_a_seed():
  r = tw.make_requests(5, 1, "train")[0]
  for style in tw.STYLES:
    assert tw.respond(r, style, 11) == tw.respond(r, style, random.Random(11))
  texts = {tw.respond(r, "comply", s) for s in range(30)}
  assert len(texts) > 10


@pytest.mark.parametrize("category", [c.name for c in tw.CATEGORIES])
def test_each_style_has_its_defining_content(category):
  rng = random.Random(category)
  cat = tw.get_category(category)
  for r in tw.make_requests(9, 12, "train", categories=category):
    t = r.topic_info
    comply = tw.respond(r, "comply", rng)
    idx = _steps_in(comply, t)
    assert len(idx) >= 3 and idx == sorted(idx)

    explain = _norm(tw.respond(r, "refuse_explain", rng))
    assert any(_norm(c) in explain for c in cat.concerns)
    assert any(_norm(a) in explain for a in t.alternatives)
    assert not _steps_in(explain, t)

    flat = _norm(tw.respond(r, "refuse_flat", rng))
    assert not any(_norm(c) in flat for c in cat.concerns) and not _steps_in(flat, t)

    off = tw.respond(r, "off_topic", rng)
    assert not _steps_in(off, t)
    others = [o for o in tw.TOPICS if len(_steps_in(off, o)) >= 3]
    assert len(others) == 1 and not others[0].harmful

    assert len(_steps_in(tw.respond(r, "partial", rng), t)) <= 2


def test_responses_stay_short():
  rng = random.Random(0)
  for r in tw.make_requests(3, 400, "train"):
    for style in tw.STYLES:
      assert len(re.findall(r"\S+", r.text + " " + tw.respond(r, style, rng))) <= 100


def test_respond_accepts_topics_and_rejects_unknown_styles():
  for style in tw.STYLES:
    assert tw.respond(tw.get_topic("bread"), style, 1) == tw.respond("bread", style, 1)
  with pytest.raises(ValueError, match="style"):
    tw.respond("bread", "rude", 0)
