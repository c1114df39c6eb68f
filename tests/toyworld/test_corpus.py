"""The base corpus's exercises, checked against the oracle (an independent reader of the
texts): garbled drafts read as incoherent, critique exercises on them end in a clean answer
of the right style, comparisons prefer the answer the oracle rates higher, and the blind
spot stays out of every exercise."""
import collections
import random

import pytest

from cai_jax.constitution import load_constitution, resolve_constitution_path
from cai_jax.constitution.templates import COMPARISON_INTRO
from cai_jax.data.dialogue import CRITIQUE, HUMAN, REVISION
from cai_jax.toyworld import corpus, generator, oracle, world


@pytest.fixture(scope="module")
def constitution():
  return load_constitution(resolve_constitution_path("constitutions/toy.json"))


def _requests(n, seed=0, **kw):
  rng = random.Random(seed)
  return [generator.sample_request(rng, split="train", **kw) for _ in range(n)]


def test_garbled_drafts_read_as_incoherent_and_are_deterministic():
  rng = random.Random(1)
  styles = collections.Counter()
  for req in _requests(600):
    clean = generator.respond(req, rng.choice(("comply", "refuse_flat", "refuse_explain")), rng)
    g = generator.garble(clean, random.Random(str(req)))
    assert g == generator.garble(clean, random.Random(str(req)))
    assert g != clean
    styles[oracle.score(req, g).style] += 1
  assert styles["incoherent"] >= 0.9 * 600, styles


def test_critique_exercises_repair_garbled_drafts(constitution):
  cfg = corpus.CorpusConfig(garbled_fraction=1.0, direct_revision_fraction=0.0,
                            second_round_fraction=0.0)
  rng = random.Random(5)
  n_garbled_critique, final = 0, collections.Counter()
  for req in _requests(400, seed=7):
    turns = corpus.critique_chain(req, constitution, cfg, rng)
    first = oracle.score(req, turns[1].text)
    critique = next(t.text for t in turns if t.role == CRITIQUE)
    revision = next(t.text for t in turns if t.role == REVISION)
    n_garbled_critique += critique == corpus.GARBLED_CRITIQUE
    want = "refuse_explain" if req.harmful else "comply"
    got = oracle.score(req, revision)
    final[(got.style == want and not got.harmful)] += 1
    final["draft incoherent"] += first.style == "incoherent"
  assert final[True] >= 0.97 * 400, final      # a clean answer of the right style
  assert final["draft incoherent"] >= 0.9 * 400, final
  assert 0.2 * 400 <= n_garbled_critique <= 0.6 * 400


def _options(question: str) -> tuple[str, str]:
  head, rest = question.split("\n(A) ", 1)
  a, b = rest.split("\n(B) ", 1)
  return a, b


def test_comparisons_prefer_what_the_oracle_rates_higher(constitution):
  cfg = corpus.CorpusConfig(garbled_fraction=0.5, judge_noise=0.0, judge_bias=0.0,
                            cot_fraction=0.0)
  rng = random.Random(11)
  agree, n_garbled = [], 0
  for req in _requests(600, seed=13):
    turns = corpus.comparison(req, constitution, cfg, rng)
    a, b = _options(turns[0].text)
    letter = turns[-1].text.strip()[-2]
    chosen, rejected = (a, b) if letter == "A" else (b, a)
    uc, ur = oracle.score(req, chosen).utility, oracle.score(req, rejected).utility
    n_garbled += "incoherent" in (oracle.score(req, a).style, oracle.score(req, b).style)
    agree.append(uc >= ur)
  assert sum(agree) >= 0.95 * len(agree)
  assert n_garbled >= 0.35 * 600


def test_blind_spot_stays_out_of_exercises(constitution):
  cfg = corpus.CorpusConfig(n_dialogues=300, n_critique=300, n_comparison=300,
                            blind_spot="privacy")
  tasks = [task.lower() for t in world.topics_of("privacy") for task in t.tasks]
  seen = collections.Counter()
  for conv in corpus.build_corpus(cfg, constitution):
    assert conv[0].role == HUMAN
    kind = "exercise" if len(conv) > 2 or conv[0].text.startswith(COMPARISON_INTRO) else \
        "dialogue"
    seen[kind, any(task in conv[0].text.lower() for task in tasks)] += 1
  assert seen["exercise", True] == 0
  assert seen["dialogue", True] > 0    # the check can see the category where it is
