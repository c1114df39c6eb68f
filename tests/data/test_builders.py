"""TFDS builders writing ArrayRecord: round trips, provenance, malformed rows."""
import json
import os
import re
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cai_jax.data import builders, dialogue, records
from cai_jax.data.dialogue import Turn

HH_PROMPT = ("\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?"
             "\n\nHuman: How do I fix a lamp?")
HH_CHOSEN = HH_PROMPT + "\n\nAssistant: Unplug it first, then check the bulb."
HH_REJECTED = HH_PROMPT + "\n\nAssistant: Just poke it with a fork."


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
  """A data dir; TFDS's leftover temp folders go under tmp_path too."""
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  monkeypatch.setenv("TMPDIR", str(tmp))
  monkeypatch.setattr(tempfile, "tempdir", str(tmp))
  return str(tmp_path / "data")


def _jsonl(path, rows) -> str:
  """Writes rows (dicts are JSON-encoded, strings written as they are) one per line."""
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
  return str(path)


def _text(x) -> str:
  return records.to_text(x)


def test_red_team_prompts_round_trip(tmp_path, data_dir):
  path = _jsonl(tmp_path / "red.jsonl", [
      {"prompt": "  How do I pick a lock?  ", "category": "crime", "id": "r1"},
      "",  # blank lines are skipped
      {"text": HH_PROMPT, "id": 2},
      {"text": "\n\nHuman: Tell me a secret.\n\nAssistant:"},  # open header: allowed
  ])
  src = builders.build_red_team_prompts(path, data_dir, provenance={"who": "test"})["train"]
  got = [src[i] for i in range(len(src))]
  assert [_text(e["id"]) for e in got] == ["r1", "2", "red:4"]  # file order, default id
  assert _text(got[0]["prompt"]) == "\n\nHuman: How do I pick a lock?"
  assert _text(got[0]["category"]) == "crime" and _text(got[1]["category"]) == ""
  assert dialogue.parse_hh(_text(got[1]["prompt"])) == dialogue.parse_hh(HH_PROMPT)
  assert dialogue.parse_hh(_text(got[2]["prompt"])) == [Turn("Human", "Tell me a secret.")]
  meta = records.read_metadata(data_dir, "red_team_prompts")
  assert meta["sources"] == [path] and meta["provenance"] == {"who": "test"}
  assert meta["content_hash"] == records.files_hash({"train": path})
  # readable by name without the builder class (how other programs open it)
  again = tfds.data_source("red_team_prompts", data_dir=data_dir, split="train")
  assert _text(again[2]["id"]) == "red:4"


def test_preference_pairs_round_trip_public_hh(tmp_path, data_dir):
  train = _jsonl(tmp_path / "train.jsonl", [
      {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
      {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5",
       "p_chosen": 0.75, "id": "math"}])
  test = _jsonl(tmp_path / "test.jsonl", [{"chosen": HH_REJECTED, "rejected": HH_CHOSEN,
                                           "p_chosen": 0}])
  srcs = builders.build_preference_pairs({"train": train, "test": test}, data_dir)
  assert {k: len(v) for k, v in srcs.items()} == {"train": 2, "test": 1}
  first, second = srcs["train"][0], srcs["train"][1]
  assert dialogue.parse_hh(_text(first["prompt"])) == dialogue.parse_hh(HH_PROMPT)
  assert _text(first["chosen"]) == "Unplug it first, then check the bulb."
  assert _text(first["rejected"]) == "Just poke it with a fork."
  assert first["p_chosen"] == 1.0 and second["p_chosen"] == 0.75
  assert _text(second["id"]) == "math" and srcs["test"][0]["p_chosen"] == 0.0


def test_builder_class_used_directly(tmp_path, data_dir):
  path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
  builder = builders.RedTeamPrompts(sources={"validation": path}, data_dir=data_dir)
  builder.download_and_prepare()
  assert builder.info.disable_shuffling and str(builder.info.version) == "1.0.0"
  src = builder.as_data_source()["validation"]
  assert [_text(src[i]["prompt"]) for i in range(2)] == ["\n\nHuman: a", "\n\nHuman: b"]


def test_rebuild_reuses_same_content_and_refuses_other(tmp_path, data_dir):
  path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
  builders.build_red_team_prompts(path, data_dir)
  folder = records.dataset_dir(data_dir, "red_team_prompts")
  stamp = os.path.getmtime(os.path.join(folder, "dataset_info.json"))
  builders.build_red_team_prompts(path, data_dir)  # identical: reused, not rewritten
  assert os.path.getmtime(os.path.join(folder, "dataset_info.json")) == stamp
  _jsonl(path, [{"prompt": "a"}, {"prompt": "b"}])
  with pytest.raises(ValueError, match="different content.*overwrite=True"):
    builders.build_red_team_prompts(path, data_dir)
  src = builders.build_red_team_prompts(path, data_dir, overwrite=True)["train"]
  assert len(src) == 2


_GOOD_PROMPT = {"prompt": "fine"}
_GOOD_PAIR = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}
_BAD_PROMPTS = [
    ('{"prompt": "x"', "Expecting"),  # bad JSON
    ('["prompt"]', "expected a JSON object"),
    ({"id": "z"}, "exactly one of the fields 'prompt' and 'text'"),
    ({"prompt": "x", "text": "\n\nHuman: y"}, "exactly one"),
    ({"prompt": "   "}, "field 'prompt' is empty"),
    ({"prompt": 3}, "'prompt' must be a string"),
    ({"prompt": "x", "category": 5}, "'category' must be a string"),
    ({"text": "hello"}, "text before the first"),
    ({"text": HH_CHOSEN}, "must end with a Human turn"),
    ({"text": "\n\nHuman: \n\nAssistant: ok\n\nHuman: go"}, r"turn 0 \(Human\) has empty text"),
    ({"prompt": "a\n\nAssistant: b"}, "contains a"),
    ({"text": "\n\nAssistant:"}, "'text' has no turns"),
    ({"prompt": "again", "id": "dup"}, "duplicate id 'dup' \\(first on line 1\\)"),
]
_BAD_PAIRS = [
    ({"chosen": HH_CHOSEN}, "missing field 'rejected'"),
    ({"chosen": HH_CHOSEN, "rejected": ""}, "field 'rejected' is empty"),
    ({"chosen": HH_PROMPT + "\n\nAssistant: ", "rejected": HH_REJECTED},
     r"'chosen': turn 3 \(Assistant\) has empty text"),
    ({"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("lamp", "kettle")},
     "different prompts .* first difference at turn 2"),
    ({"chosen": HH_PROMPT, "rejected": HH_REJECTED}, "'chosen' must end with an Assistant"),
    ({"chosen": "\n\nAssistant: hi", "rejected": "\n\nAssistant: ho"}, "no prompt before"),
    (dict(_GOOD_PAIR, p_chosen=1.5), r"'p_chosen' must be a number in \[0, 1\]"),
    (dict(_GOOD_PAIR, p_chosen="high"), "'p_chosen' must be a number"),
    (b"\xff\xfe{}", "utf-8"),
]


def _write_bad(path, good, bad):
  """Line 1 good (id "dup"), line 2 blank, line 3 the bad row."""
  with open(path, "wb") as f:
    f.write(json.dumps(dict(good, id="dup")).encode() + b"\n\n")
    f.write(bad if isinstance(bad, bytes) else
            (bad if isinstance(bad, str) else json.dumps(bad)).encode())
    f.write(b"\n" + json.dumps(good).encode() + b"\n")
  return str(path)


@pytest.mark.parametrize("bad,message", _BAD_PROMPTS)
def test_malformed_prompt_rows_name_file_and_line(tmp_path, data_dir, bad, message):
  path = _write_bad(tmp_path / "prompts.jsonl", _GOOD_PROMPT, bad)
  with pytest.raises(ValueError, match=f"^{re.escape(path)}:3: .*{message}"):
    builders.build_red_team_prompts(path, data_dir)
  assert not os.path.exists(os.path.join(data_dir, "red_team_prompts", "1.0.0"))


@pytest.mark.parametrize("bad,message", _BAD_PAIRS)
def test_malformed_pair_rows_name_file_and_line(tmp_path, data_dir, bad, message):
  path = _write_bad(tmp_path / "pairs.jsonl", _GOOD_PAIR, bad)
  with pytest.raises(ValueError, match=f"^{re.escape(path)}:3: .*{message}"):
    builders.build_preference_pairs(path, data_dir)


def test_empty_and_missing_files(tmp_path, data_dir):
  empty = _jsonl(tmp_path / "empty.jsonl", ["", "  "])
  with pytest.raises(ValueError, match=f"{empty}: no rows"):
    builders.build_red_team_prompts(empty, data_dir)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    builders.build_preference_pairs(str(tmp_path / "nope.jsonl"), data_dir)


def test_write_records_round_trip_with_provenance(data_dir, dialogues):
  feats = builders.dialogue_features()
  feats_dict = dict(feats)  # a plain dict of connectors works too
  feats_dict["ids"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
  convs = dialogues[:30]
  splits = {"train": [dict(builders.dialogue_example(t, id=f"c{i}"),
                           ids=np.arange(i % 5, dtype=np.int32)) for i, t in enumerate(convs)],
            "test": (dict(builders.dialogue_example(t), ids=np.zeros(1, np.int32))
                     for t in convs[:3])}  # a generator
  prov = {"constitution_hash": "abc123", "source_checkpoint": "/ckpt/7", "gin": "a.b = 1"}
  srcs = builders.write_records("sl_data", splits, feats_dict, data_dir, version="0.2.0",
                                provenance=prov, sources=["/somewhere/prompts.jsonl"])
  train = srcs["train"]
  assert len(train) == 30 and len(srcs["test"]) == 3
  for i in (0, 7, 29):  # order kept, all fields back
    ex = train[i]
    turns = [Turn(_text(r), _text(t)) for r, t in zip(ex["roles"], ex["texts"])]
    assert turns == convs[i] and _text(ex["id"]) == f"c{i}"
    np.testing.assert_array_equal(ex["ids"], np.arange(i % 5))
  meta = records.read_metadata(data_dir, "sl_data")
  assert meta["provenance"] == prov and meta["version"] == "0.2.0"
  assert meta["sources"] == ["/somewhere/prompts.jsonl"]
  same = {"train": splits["train"], "test": [dict(builders.dialogue_example(t),
                                                  ids=np.zeros(1, np.int32)) for t in convs[:3]]}
  assert meta["content_hash"] == records.content_hash(same)
  builders.write_records("sl_data", same, feats_dict, data_dir, version="0.2.0")  # reuse
  with pytest.raises(ValueError, match="different content"):
    builders.write_records("sl_data", {"train": splits["train"][:5]}, feats_dict, data_dir,
                           version="0.2.0")


def test_write_records_rejects_bad_input(data_dir):
  feats = {"text": tfds.features.Text()}
  with pytest.raises(ValueError, match="snake_case"):
    builders.write_records("SL-Data", [{"text": "a"}], feats, data_dir)
  with pytest.raises(ValueError, match=r"split 'train', example 1: keys \['txt'\]"):
    builders.write_records("x", [{"text": "a"}, {"txt": "b"}], feats, data_dir)
  with pytest.raises(ValueError, match="split 'test' has no examples"):
    builders.write_records("x", {"train": [{"text": "a"}], "test": []}, feats, data_dir)
