"""The toy world: an embedded, ground-truth testbed for Constitutional AI.

A small procedurally generated assistant domain (the README's "What the main command
shows" describes the experiment built on it):

* ``world``: the content (benign and harm categories, topics, steps, alternatives).
* ``generator``: seeded requests (train / eval splits with held-out (topic, phrasing)
  combinations) and responses in every style.
* ``oracle``: ``score(request, text)``, the true harm, helpfulness and style of any text.
  For evaluation only; no training path may call it.

Pure Python, no JAX. Typical use::

  from cai_jax import toyworld as tw

  reqs = tw.make_requests(seed=0, n=100, split="eval", balanced=True)
  answer = tw.respond(reqs[0], "refuse_explain", rng=1)
  tw.score(reqs[0], answer)  # Verdict(harmful=False, helpful=..., style="refuse_explain")
"""
from cai_jax.toyworld.generator import (DEFAULT_TYPO_RATE, EVAL_PERIOD, SPLITS, STYLES,
                                        Request, add_typo, is_eval_combo, make_requests,
                                        phrasings_for, respond, sample_request)
from cai_jax.toyworld.oracle import STYLES as VERDICT_STYLES
from cai_jax.toyworld.oracle import Verdict, parse, score
from cai_jax.toyworld.world import (BENIGN_CATEGORIES, CATEGORIES, DEFAULT_BLIND_SPOT,
                                    HARM_CATEGORIES, TOPICS, Category, Topic, get_category,
                                    get_topic, second_person, topics_of)

__all__ = [
    "BENIGN_CATEGORIES", "CATEGORIES", "DEFAULT_BLIND_SPOT", "DEFAULT_TYPO_RATE",
    "EVAL_PERIOD", "HARM_CATEGORIES", "SPLITS", "STYLES", "TOPICS", "VERDICT_STYLES",
    "Category", "Request", "Topic", "Verdict", "add_typo", "get_category", "get_topic",
    "is_eval_combo", "make_requests", "parse", "phrasings_for", "respond", "sample_request",
    "score", "second_person", "topics_of",
]
