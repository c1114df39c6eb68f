"""Readers of user files report bad input as ``InputError`` / ``ConstitutionError`` naming
the file, the 1-based physical line (blank lines counted) and the field; good files read
the same whichever way they are written (CRLF, byte-order mark, .txt or .jsonl)."""
import dataclasses
import json
import os

import pytest

from cai_jax.constitution.load import load_constitution
from cai_jax.constitution.schema import ConstitutionError
from cai_jax.data.conversations import (InputError, parse_preference_row, parse_prompt_row,
                                        read_conversations, read_jsonl, read_prompts)
from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY_CONSTITUTION = os.path.join(ROOT, "constitutions", "toy.json")
PROMPT = {"prompt": "How do I fix my lamp?"}
CHOSEN = "\n\nHuman: How do I fix my lamp?\n\nAssistant: Check the bulb first."
REJECTED = "\n\nHuman: How do I fix my lamp?\n\nAssistant: I can't help with that."
PAIR = {"chosen": CHOSEN, "rejected": REJECTED}
CONVERSATION = {"turns": [{"role": HUMAN, "text": "Hi"}, {"role": ASSISTANT, "text": "Hello"}]}


def _write(path, lines, end=b"\n") -> str:
  """Writes ``lines`` (dicts as JSON, str as UTF-8, bytes as is), each ended by ``end``."""
  def encode(x):
    return x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()
  path.write_bytes(b"".join(encode(x) + end for x in lines))
  return str(path)


def _error(read, path, line, *needles, field=None) -> InputError:
  """Asserts ``read(path)`` raises an ``InputError`` at ``path:line`` naming the needles."""
  with pytest.raises(InputError) as info:
    read(path)
  err, msg = info.value, str(info.value)
  assert isinstance(err, ValueError)
  assert msg.startswith(f"{path}:{line}: "), msg
  assert (err.path, err.line, err.field) == (path, line, field), (err.path, err.line, err.field)
  for needle in needles:
    assert needle in msg, (needle, msg)
  return err


def _prompts(path):
  return read_jsonl(path, parse_prompt_row)


def _pairs(path):
  return read_jsonl(path, parse_preference_row)


# ------------------------------------------------------------------- JSONL line errors
def test_invalid_json_counts_blank_lines(tmp_path):
  path = _write(tmp_path / "p.jsonl", [PROMPT, b"", b"   ", b'{"prompt": "x",}', PROMPT])
  err = _error(read_prompts, path, 4, "invalid JSON at column 16")
  assert "line 1" not in err.problem  # no decoder position contradicting the line


def test_truncated_last_line_without_newline(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_bytes(json.dumps(PROMPT).encode() + b"\n\n" + b'{"prompt": "x"')
  _error(read_prompts, str(path), 3, "invalid JSON at column 15", "Expecting ','")


def test_invalid_utf8_names_line_and_column(tmp_path):
  path = _write(tmp_path / "p.jsonl", [PROMPT, b"", b'{"prompt": "caf\xc3\xa9 \xff"}'])
  _error(read_prompts, path, 3, "not valid utf-8 at column 18", "byte 0xff",
         "file offset 55")


def test_invalid_utf8_in_a_blank_looking_line(tmp_path):
  path = _write(tmp_path / "p.jsonl", [PROMPT, b"  \x80"])
  _error(read_prompts, path, 2, "not valid utf-8 at column 3", "byte 0x80")


def test_row_that_is_not_an_object(tmp_path):
  path = _write(tmp_path / "p.jsonl", [PROMPT, b"", ["x"]])
  _error(read_prompts, path, 3, "expected a JSON object, got array", "not one array")


def test_lone_carriage_returns_get_a_hint(tmp_path):
  path = _write(tmp_path / "p.jsonl", [PROMPT, PROMPT], end=b"\r")
  _error(read_prompts, path, 1, "invalid JSON", "lone '\\r'")


@pytest.mark.parametrize("row,field,needle", [
    ({"prompt": "   "}, "prompt", "field 'prompt' is empty"),
    ({"prompt": 3}, "prompt", "field 'prompt' must be a string, got number"),
    ({"prompt": "x", "category": None}, "category", "field 'category' must be a string, got null"),
    (dict(PROMPT, id=["a"]), "id", "field 'id' must be a string, got array"),
])
def test_bad_prompt_field(tmp_path, row, field, needle):
  path = _write(tmp_path / "p.jsonl", [b"", PROMPT, row])
  _error(read_prompts, path, 3, needle, field=field)


def test_prompt_row_without_prompt_or_text(tmp_path):
  path = _write(tmp_path / "p.jsonl", [PROMPT, {"id": "x"}])
  _error(read_prompts, path, 2, "'prompt'", "'text'")


def test_duplicate_id_names_both_lines(tmp_path):
  path = _write(tmp_path / "p.jsonl", [dict(PROMPT, id="a"), b"", dict(PROMPT, id="a")])
  _error(_prompts, path, 3, "duplicate id 'a' (first on line 1)", field="id")


def test_empty_file(tmp_path):
  path = _write(tmp_path / "p.jsonl", [b"", b" "])
  with pytest.raises(InputError, match="no rows") as info:
    read_prompts(path)
  assert str(info.value) == f"{path}: no rows" and info.value.line == 0


# ---------------------------------------------------------------- preference pairs
@pytest.mark.parametrize("row,field,needle", [
    ({"chosen": CHOSEN}, "rejected", "missing field 'rejected'"),
    ({"chosen": "", "rejected": REJECTED}, "chosen", "field 'chosen' is empty"),
    ({"chosen": CHOSEN, "rejected": 1}, "rejected", "field 'rejected' must be a string"),
    (dict(PAIR, p_chosen="high"), "p_chosen", "'p_chosen' must be a number"),
])
def test_bad_pair_field(tmp_path, row, field, needle):
  path = _write(tmp_path / "pairs.jsonl", [PAIR, b"", b"", row])
  _error(_pairs, path, 4, needle, field=field)


def test_degenerate_pair(tmp_path):
  same = CHOSEN.replace("first.", "first.  ")  # the same response once stripped
  path = _write(tmp_path / "pairs.jsonl", [PAIR, b"", {"chosen": CHOSEN, "rejected": same}])
  _error(_pairs, path, 3, "degenerate pair", "'chosen'", "'rejected'", field="rejected")


# ---------------------------------------------------------------- conversations files
@pytest.mark.parametrize("row,field,needle", [
    ({"id": "x"}, None, "expected a 'turns' or a 'text' field"),
    ({"turns": []}, "turns", "field 'turns' must be a non-empty list"),
    ({"turns": [{"role": HUMAN}]}, "turns[0]", "'turns' item 0 must be an object"),
    ({"turns": [{"role": HUMAN, "text": 1}]}, "turns[0].text", "item 0: 'text' must be a string"),
    ({"turns": [{"role": "Bot", "text": "x"}]}, "turns[0].role", "unknown dialogue role 'Bot'"),
    ({"text": 5}, "text", "field 'text' must be a string"),
    ({"text": "no headers"}, "text", "field 'text': text before the first"),
    ({"turns": [{"role": HUMAN, "text": "x"}]}, None, "no assistant turn"),
])
def test_bad_conversation_row(tmp_path, row, field, needle):
  path = _write(tmp_path / "c.jsonl", [CONVERSATION, b"", row])
  _error(read_conversations, path, 3, needle, field=field)


def test_conversation_errors_of_the_line_itself(tmp_path):
  bad_utf8 = _write(tmp_path / "u.jsonl", [CONVERSATION, b"", b'{"text": "\xe9"}'])
  _error(read_conversations, bad_utf8, 3, "not valid utf-8 at column 11", "byte 0xe9")
  bad_json = _write(tmp_path / "j.jsonl", [b"", CONVERSATION, b"{turns}"])
  _error(read_conversations, bad_json, 3, "invalid JSON at column 2")
  not_object = _write(tmp_path / "o.jsonl", [CONVERSATION, b'"text"'])
  _error(read_conversations, not_object, 2, "expected a JSON object, got string")
  empty = _write(tmp_path / "e.jsonl", [b""])
  with pytest.raises(InputError, match="no conversations"):
    read_conversations(empty)


# ------------------------------------------------------------ plain-text prompt files
def test_txt_prompts(tmp_path):
  path = _write(tmp_path / "asks.txt", ["How do I fix my lamp?", "", "  Why is the sky blue?  "])
  assert read_prompts(path) == [
      ("asks:1", (Turn(HUMAN, "How do I fix my lamp?"),)),
      ("asks:3", (Turn(HUMAN, "Why is the sky blue?"),))]


def test_txt_prompts_read_like_the_same_jsonl(tmp_path):
  texts = ["How do I fix my lamp?", "Tell me a joke."]
  txt = _write(tmp_path / "asks.txt", texts)
  jsonl = _write(tmp_path / "asks.jsonl", [{"prompt": t} for t in texts])
  assert read_prompts(txt) == read_prompts(jsonl)


def test_txt_prompt_with_invalid_utf8(tmp_path):
  path = _write(tmp_path / "asks.txt", ["first", "", b"caf\xe9"])
  _error(read_prompts, path, 3, "not valid utf-8 at column 4", "byte 0xe9")


def test_txt_prompt_with_a_dialogue_header(tmp_path):
  path = _write(tmp_path / "asks.txt", ["ok", "a Human: b"])
  assert [t for _, (t,) in read_prompts(path)][1] == Turn(HUMAN, "a Human: b")


@pytest.mark.parametrize("name", ["prompts.csv", "prompts", "prompts.jsonl.gz"])
def test_other_prompt_extensions_are_refused(tmp_path, name):
  path = _write(tmp_path / name, [PROMPT])
  with pytest.raises(InputError) as info:
    read_prompts(path)
  msg = str(info.value)
  assert msg.startswith(f"{path}: unsupported prompt file extension")
  for ext in (".jsonl", ".json", ".txt"):
    assert ext in msg


def test_json_extension_is_json_lines(tmp_path):
  path = _write(tmp_path / "p.json", [PROMPT])
  assert read_prompts(path) == [("p:1", (Turn(HUMAN, PROMPT["prompt"]),))]
  array = tmp_path / "a.json"
  array.write_text(json.dumps([PROMPT], indent=1))
  _error(read_prompts, str(array), 1, "invalid JSON", "not one array")


# ------------------------------------------------------- good files read identically
def test_crlf_and_byte_order_mark_read_the_same(tmp_path):
  rows = [dict(PROMPT, id="a"), b"", {"text": "\n\nHuman: Hi\n\nAssistant: Yo\n\nHuman: Why?"}]
  plain = read_prompts(_write(tmp_path / "plain.jsonl", rows))
  crlf = read_prompts(_write(tmp_path / "plain2.jsonl", rows, end=b"\r\n"))
  bom = tmp_path / "plain3.jsonl"
  bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.jsonl").read_bytes())
  assert [r[1] for r in plain] == [r[1] for r in crlf] == [r[1] for r in read_prompts(str(bom))]
  assert [r[0] for r in plain] == ["a", "plain:3"]


def test_conversations_and_pairs_read_the_same(tmp_path):
  convs = [CONVERSATION, b"", {"text": "\n\nHuman: Hi\n\nAssistant: Hello"}]
  a = read_conversations(_write(tmp_path / "a.jsonl", convs))
  b = read_conversations(_write(tmp_path / "b.jsonl", convs, end=b"\r\n"))
  assert a == b == [[Turn(HUMAN, "Hi"), Turn(ASSISTANT, "Hello")]] * 2
  pairs = _pairs(_write(tmp_path / "pairs.jsonl", [b"", dict(PAIR, p_chosen=0.75)]))
  assert len(pairs) == 1
  assert pairs[0]["id"] == "pairs:2" and pairs[0]["chosen"] == "Check the bulb first."
  assert pairs[0]["rejected"] == "I can't help with that." and pairs[0]["p_chosen"] == 0.75


def test_read_jsonl_without_an_id_key(tmp_path):
  rows = read_jsonl(_write(tmp_path / "r.jsonl", [{"x": 1}, b"", {"x": 2, "id": "b"}]), dict)
  assert rows == [{"x": 1, "id": "r:1"}, {"x": 2, "id": "b"}]


# ---------------------------------------------------------------------- constitutions
def _constitution_problem(path) -> str:
  with pytest.raises(ConstitutionError) as info:
    load_constitution(path)
  assert str(path) in str(info.value)
  assert len(info.value.problems) == 1
  return info.value.problems[0].message


def test_constitution_with_invalid_utf8(tmp_path):
  path = tmp_path / "c.json"
  path.write_bytes(b'{\n  "version": 1,\n  "name": "t\xc3\xa9st\xff"\n}\n')
  msg = _constitution_problem(path)
  assert "not valid utf-8 at line 3, column 16" in msg and "byte 0xff" in msg, msg
  assert "file offset 34" in msg


def test_constitution_with_invalid_json(tmp_path):
  path = tmp_path / "c.json"
  path.write_text('{\n  "version": 1,\n\n  "name": x\n}\n')
  msg = _constitution_problem(path)
  assert "not valid JSON" in msg and "line 4, column 11" in msg, msg


def test_constitution_with_byte_order_mark_reads_the_same(tmp_path):
  path = tmp_path / "toy.json"
  with open(TOY_CONSTITUTION, "rb") as f:
    path.write_bytes(b"\xef\xbb\xbf" + f.read())
  got, want = load_constitution(str(path)), load_constitution(TOY_CONSTITUTION)
  assert dataclasses.replace(got, source=want.source) == want
