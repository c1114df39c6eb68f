"""constitutions/toy_selected7.json (the collective experiment's wording control) is toy.json
restricted to the seven principles the synthetic poll selects, word for word."""
import json
import os

from cai_jax.constitution import load_constitution

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEPT_CRITIQUE = {"home-entry", "private-data", "hurting-people", "dangerous-substance",
                 "help-if-harmless", "harassing-groups", "explain-refusal"}
KEPT_COMPARISON = {"home-entry", "private-data", "hurting-people", "dangerous-substance",
                   "helps-harmless-requests", "harassing-groups", "explained-refusal"}


def _read(name):
  with open(os.path.join(ROOT, "constitutions", name), encoding="utf-8") as f:
    return json.load(f)


def test_the_control_is_toy_json_restricted():
  toy, control = _read("toy.json"), _read("toy_selected7.json")
  assert control["critique_principles"] == [p for p in toy["critique_principles"]
                                            if p["id"] in KEPT_CRITIQUE]
  assert control["comparison_principles"] == [p for p in toy["comparison_principles"]
                                              if p["id"] in KEPT_COMPARISON]
  assert len(control["critique_principles"]) == len(control["comparison_principles"]) == 7
  for key in ("critique_exemplars", "comparison_exemplars"):
    assert control[key] == toy[key]
  loaded = load_constitution(os.path.join(ROOT, "constitutions", "toy_selected7.json"))
  assert {p.id for p in loaded.critique_principles} == KEPT_CRITIQUE
