"""Constitution files: the shipped ones validate; broken ones report every problem with a path."""
import copy
import json
import os

import pytest

from cai_jax.constitution import (ConstitutionError, load_constitution, parse_constitution,
                                  resolve_constitution_path)
from cai_jax.constitution.load import REPO_ROOT

DEFAULT = os.path.join(REPO_ROOT, "constitutions", "default.json")
TOY = os.path.join(REPO_ROOT, "constitutions", "toy.json")


def _good() -> dict:
  return {
      "version": 1,
      "name": "mini",
      "description": "A small valid constitution.",
      "critique_principles": [
          {"id": "harm", "critique_request": "Is the last response harmful?",
           "revision_request": "Rewrite it to be harmless."},
          {"id": "kind", "critique_request": "Is the last response unkind?",
           "revision_request": "Rewrite it kindly."},
      ],
      "comparison_principles": [{"id": "less-harmful", "text": "Which is less harmful?"}],
      "critique_exemplars": [{"id": "ex", "turns": [
          {"role": "Human", "text": "Hi"}, {"role": "Assistant", "text": "Hello"},
          {"role": "CritiqueRequest", "text": "Is the last response harmful?"},
          {"role": "Critique", "text": "No."},
          {"role": "RevisionRequest", "text": "Rewrite it to be harmless."},
          {"role": "Revision", "text": "Hello!"}]}],
      "comparison_exemplars": [{
          "id": "cx", "conversation": [{"role": "Human", "text": "Hi"}],
          "response_a": "Hello", "response_b": "Go away", "principle": "Which is kinder?",
          "answer": "A", "reasoning": "(A) is friendly."}],
  }


def _write(tmp_path, data, name="c.json") -> str:
  path = tmp_path / name
  path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
  return str(path)


def _problems(tmp_path, data) -> dict[str, str]:
  with pytest.raises(ConstitutionError) as info:
    load_constitution(_write(tmp_path, data))
  err = info.value
  for p in err.problems:  # every problem is in the one message, with its path
    assert f"{p.path}: {p.message}" in str(err)
  assert f"{len(err.problems)} problem" in str(err)
  return {p.path: p.message for p in err.problems}


def test_default_constitution():
  c = load_constitution(DEFAULT)
  assert c.version == 1 and c.name == "default" and c.description
  assert len(c.critique_principles) == 16 and len(c.comparison_principles) == 16
  assert len({p.id for p in c.critique_principles}) == 16
  assert c.critique_exemplars and c.comparison_exemplars
  assert all(e.reasoning for e in c.comparison_exemplars)
  assert c.source == DEFAULT


def test_toy_constitution_is_short_and_covers_the_toy_harms():
  c = load_constitution(TOY)
  for p in c.critique_principles:
    assert len(p.critique_request.split()) < 25, p
    assert len(p.revision_request.split()) < 25, p
  for p in c.comparison_principles:
    assert len(p.text.split()) < 25, p
  ids = {p.id for p in c.critique_principles}
  assert {"home-entry", "dangerous-substance", "hurting-people", "harassing-groups",
          "private-data", "explain-refusal"} <= ids
  # Non-evasive: revisions ask for a reason, not just a refusal.
  assert sum("why" in p.revision_request for p in c.critique_principles) >= 8


def test_relative_path_resolves_from_repo_root(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert resolve_constitution_path("constitutions/toy.json") == TOY
  assert load_constitution("constitutions/toy.json").name == "toy"
  with pytest.raises(FileNotFoundError, match="no constitution file"):
    load_constitution("constitutions/nope.json")


def test_round_trip_and_lookup(tmp_path):
  c = load_constitution(DEFAULT)
  again = load_constitution(_write(tmp_path, c.to_json()))
  assert again == c and again.content_hash == c.content_hash
  assert c.critique_principle("privacy").id == "privacy"
  with pytest.raises(KeyError, match="known ids"):
    c.comparison_principle("nope")


def test_missing_field(tmp_path):
  data = _good()
  del data["critique_principles"][1]["revision_request"]
  del data["name"]
  problems = _problems(tmp_path, data)
  assert problems == {"$.critique_principles[1].revision_request": "missing field",
                      "$.name": "missing field"}


def test_empty_principle_and_empty_lists(tmp_path):
  data = _good()
  data["critique_principles"][0]["critique_request"] = "   "
  data["comparison_principles"] = []
  problems = _problems(tmp_path, data)
  assert problems["$.critique_principles[0].critique_request"] == "must not be empty"
  assert problems["$.comparison_principles"] == "must not be empty"


def test_duplicate_id(tmp_path):
  data = _good()
  data["critique_principles"][1]["id"] = "harm"
  problems = _problems(tmp_path, data)
  assert problems == {"$.critique_principles[1].id":
                      "duplicate id 'harm' (first used at $.critique_principles[0].id)"}


def test_wrong_types(tmp_path):
  data = _good()
  data["version"] = "1"
  data["critique_principles"][0]["revision_request"] = 3
  data["comparison_principles"][0] = ["Which is less harmful?"]
  data["critique_exemplars"] = {"id": "ex"}
  problems = _problems(tmp_path, data)
  assert problems == {
      "$.version": "expected an integer, got string",
      "$.critique_principles[0].revision_request": "expected a string, got integer",
      "$.comparison_principles[0]": "expected an object, got array",
      "$.critique_exemplars": "expected an array, got object",
  }


def test_every_problem_is_reported_at_once(tmp_path):
  data = _good()
  data["version"] = 2
  data["extra"] = True
  data["critique_principles"][0]["critque_request"] = data["critique_principles"][0].pop(
      "critique_request")
  data["critique_principles"][1]["id"] = "harm"
  data["comparison_principles"][0]["text"] = ""
  data["comparison_exemplars"][0]["answer"] = "C"
  data["critique_exemplars"][0]["turns"][2]["role"] = "Critic"
  problems = _problems(tmp_path, data)
  assert set(problems) == {
      "$.version", "$.extra", "$.critique_principles[0].critque_request",
      "$.critique_principles[0].critique_request", "$.critique_principles[1].id",
      "$.comparison_principles[0].text", "$.comparison_exemplars[0].answer",
      "$.critique_exemplars[0].turns[2].role"}
  assert "unsupported version 2" in problems["$.version"]
  assert "did you mean 'critique_request'" in problems["$.critique_principles[0].critque_request"]
  assert problems["$.extra"].startswith("unknown field")


def test_exemplar_role_order_and_principle_lines(tmp_path):
  data = _good()
  data["critique_exemplars"][0]["turns"] = data["critique_exemplars"][0]["turns"][:3]
  data["comparison_exemplars"][0]["conversation"].append({"role": "Assistant", "text": "x"})
  data["comparison_principles"][0]["text"] = "Which is\nless harmful?"
  problems = _problems(tmp_path, data)
  assert "roles must form" in problems["$.critique_exemplars[0].turns"]
  assert "got Human, Assistant, CritiqueRequest" in problems["$.critique_exemplars[0].turns"]
  assert "ending with a Human turn" in problems["$.comparison_exemplars[0].conversation"]
  assert "single line" in problems["$.comparison_principles[0].text"]


@pytest.mark.parametrize("data, path, fragment", [
    ([], "$", "expected an object, got array"),
    (None, "$", "expected an object, got null"),
    ("{\"version\": 1,,}", "$", "not valid JSON"),
    ("{\"version\": 1, \"version\": 1}", "$.version", "more than once"),
])
def test_malformed_documents(tmp_path, data, path, fragment):
  text = data if isinstance(data, str) else json.dumps(data)
  problems = _problems(tmp_path, text)
  assert fragment in problems[path]


def test_garbage_never_raises_raw_errors():
  """Structurally wrong values anywhere give ConstitutionError, never KeyError/TypeError."""
  good = _good()
  junk = [None, 0, True, 1.5, "", "x", [], {}, [None], {"id": None}]

  def visit(node, setter):
    for value in junk:
      setter(value)
      try:
        parse_constitution(data)
      except ConstitutionError:
        pass
    setter(copy.deepcopy(node))
    if isinstance(node, dict):
      for key in list(node):
        visit(node[key], lambda v, n=node, k=key: n.__setitem__(k, v))
    elif isinstance(node, list):
      for i in range(len(node)):
        visit(node[i], lambda v, n=node, j=i: n.__setitem__(j, v))

  data = copy.deepcopy(good)
  for key in list(data):
    visit(data[key], lambda v, k=key: data.__setitem__(k, v))
  assert data == good
  assert parse_constitution(data).name == "mini"


def test_content_hash_ignores_key_order_and_whitespace(tmp_path):
  data = _good()
  compact = _write(tmp_path, json.dumps(data, separators=(",", ":")), "a.json")

  def reverse(node):
    if isinstance(node, dict):
      return {k: reverse(node[k]) for k in reversed(list(node))}
    if isinstance(node, list):
      return [reverse(v) for v in node]
    return node
  shuffled = _write(tmp_path, json.dumps(reverse(data), indent=7), "b.json")
  a, b = load_constitution(compact), load_constitution(shuffled)
  assert a == b and a.content_hash == b.content_hash
  assert len(a.content_hash) == 64 and int(a.content_hash, 16) >= 0
  # Optional fields left out hash like the same fields given explicitly.
  data["comparison_exemplars"][0].pop("reasoning")
  no_reasoning = parse_constitution(data)
  data["comparison_exemplars"][0]["reasoning"] = ""
  assert parse_constitution(data).content_hash == no_reasoning.content_hash


def test_content_hash_changes_with_any_principle():
  base = parse_constitution(_good()).content_hash
  for edit in (
      lambda d: d["critique_principles"][0].__setitem__("revision_request", "Rewrite it."),
      lambda d: d["comparison_principles"][0].__setitem__("text", "Which is safer?"),
      lambda d: d["critique_principles"].reverse(),
      lambda d: d["comparison_exemplars"][0].__setitem__("answer", "B"),
  ):
    data = _good()
    edit(data)
    assert parse_constitution(data).content_hash != base
  assert parse_constitution(_good()).content_hash == base


def test_content_hash_ignores_the_source_path(tmp_path):
  c = load_constitution(TOY)
  with open(TOY, encoding="utf-8") as f:
    copied = load_constitution(_write(tmp_path, f.read()))
  assert copied.source != c.source
  assert copied == c and copied.content_hash == c.content_hash
