"""The sentencepiece wrapper: round trips, special ids, dialogue layout, training."""
import pickle

import pytest
import sentencepiece as spm

from cai_jax.data import dialogue
from cai_jax.data.dialogue import Turn
from cai_jax.data.tokenizer import EncodedDialogue, Tokenizer, train_tokenizer

ROUND_TRIP = [
    "How do I fix my bread?",
    "  leading, trailing  and   inner spaces \t tab ",
    "\n\nHuman: two lines\nand a newline at the end\n",
    "naïve café — “quotes” and ½ ﬁ ｆｕｌｌ-width 🙂",
    "日本語のテキストと中文文本，한국어",
    "",
]


def _pieces(tok, ids):
  return [tok._sp.id_to_piece(i) for i in ids]  # pylint: disable=protected-access


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_exact(tiny_tokenizer, text):
  ids = tiny_tokenizer.encode(text)
  assert all(0 <= i < tiny_tokenizer.vocab_size for i in ids)
  assert tiny_tokenizer.decode(ids) == text
  framed = tiny_tokenizer.encode(text, add_bos=True, add_eos=True)
  assert framed == [tiny_tokenizer.bos_id] + ids + [tiny_tokenizer.eos_id]
  assert tiny_tokenizer.decode(framed) == text


def test_unseen_characters_use_byte_fallback(tiny_tokenizer):
  ids = tiny_tokenizer.encode("語")
  assert tiny_tokenizer.unk_id not in ids
  assert _pieces(tiny_tokenizer, ids)[-3:] == ["<0xE8>", "<0xAA>", "<0x9E>"]


def test_special_ids_and_properties(tiny_tokenizer):
  tok = tiny_tokenizer
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  assert tok.vocab_size == 512
  assert tok.path.endswith("tok.model")
  assert tok.token_id("<unk>") == tok.unk_id
  with pytest.raises(KeyError, match="not in the vocabulary"):
    tok.token_id("definitely-not-a-piece")


def test_decode_skips_specials_and_checks_range(tiny_tokenizer):
  tok = tiny_tokenizer
  ids = tok.encode("the river")
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id, tok.pad_id]) == "the river"
  for bad in (-1, tok.vocab_size):
    with pytest.raises(ValueError, match="outside"):
      tok.decode(ids + [bad])


def test_option_labels_are_single_tokens(tiny_tokenizer):
  tok = tiny_tokenizer
  a, b = tok.single_token_id("(A)"), tok.single_token_id("(B)")
  assert a != b
  assert tok.encode("(A)") == [a] and tok.encode("(B)") == [b]
  assert tok.encode("The answer is (B)")[-1] == b
  assert tok.token_id("(A)") != tok.unk_id and tok.token_id("\u2581(A)") == a
  with pytest.raises(ValueError, match="not one known token"):
    tok.single_token_id("(A) or (B)")


def test_encode_dialogue_layout_and_mask(tiny_tokenizer):
  tok = tiny_tokenizer
  assert _pieces(tok, tok.header_ids("Human")) == ["\u2581Human", ":"]
  assert _pieces(tok, tok.header_ids("Assistant")) == ["\u2581Assistant", ":"]
  hi, sure = tok.encode("Hi there"), tok.encode("Sure.")
  enc = tok.encode_dialogue([Turn("Human", "Hi there"), Turn("Assistant", "Sure.")])
  assert isinstance(enc, EncodedDialogue)
  h, a = tok.token_id("\u2581Human"), tok.token_id("\u2581Assistant")
  colon = tok.token_id(":")
  assert enc.ids == [2, h, colon, *hi, 3, a, colon, *sure, 3]
  assert enc.loss_mask == [0, 0, 0] + [0] * len(hi) + [0, 0, 0] + [1] * len(sure) + [1]
  assert tok.decode(enc.ids) == "Human: Hi there Assistant: Sure."
  no_bos = tok.encode_dialogue([Turn("Human", "Hi there")], add_bos=False)
  assert no_bos.ids == [h, colon, *hi, 3] and no_bos.loss_mask == [0] * len(no_bos.ids)


def test_encode_dialogue_mask_on_model_roles_only(tiny_tokenizer):
  tok = tiny_tokenizer
  turns = [Turn(role, f"body of {role.lower()}") for role in dialogue.ROLES]
  enc = tok.encode_dialogue(turns)
  assert len(enc.ids) == len(enc.loss_mask)
  pos = 1
  assert enc.ids[0] == tok.bos_id and enc.loss_mask[0] == 0
  for turn in turns:
    header, body = tok.header_ids(turn.role), tok.encode(turn.text) + [tok.eos_id]
    assert enc.ids[pos:pos + len(header)] == header
    assert enc.loss_mask[pos:pos + len(header)] == [0] * len(header)
    pos += len(header)
    assert enc.ids[pos:pos + len(body)] == body
    want = 1 if turn.role in ("Assistant", "Critique", "Revision") else 0
    assert enc.loss_mask[pos:pos + len(body)] == [want] * len(body), turn.role
    pos += len(body)
  assert pos == len(enc.ids)
  assert sum(enc.loss_mask) == sum(len(tok.encode(t.text)) + 1 for t in turns if t.is_model)


def test_open_role_prompt_is_a_prefix_of_the_training_sequence(tiny_tokenizer, dialogues):
  tok = tiny_tokenizer
  odd = [Turn("Human", "odd  spacing?\nnew line"), Turn("Assistant", " (A) 語 ! ")]
  for turns in dialogues[:40] + [odd]:
    full = tok.encode_dialogue(turns)
    for k, turn in enumerate(turns):
      prompt = tok.encode_dialogue(turns[:k], open_role=turn.role)
      n = len(prompt.ids)
      assert prompt.ids == full.ids[:n]
      assert prompt.loss_mask == full.loss_mask[:n] and prompt.loss_mask[-1] == 0
      # the model's continuation is the body and its end-of-turn token
      body_end = full.ids.index(tok.eos_id, n)
      assert full.ids[n:body_end] == tok.encode(turn.text)
      assert tok.decode_body(full.ids[n:]) == turn.text
  with pytest.raises(ValueError, match="unknown dialogue role"):
    tok.encode_dialogue([], open_role="Narrator")


def test_decode_body_cuts_at_first_eos(tiny_tokenizer):
  tok = tiny_tokenizer
  body, rest = tok.encode("Sure, here it is."), tok.encode_dialogue([Turn("Human", "more")]).ids
  assert tok.decode_body(body + [tok.eos_id] + rest) == "Sure, here it is."
  assert tok.decode_body(body) == "Sure, here it is."
  assert tok.decode_body([tok.eos_id] + body) == ""
  assert tok.decode_body(body + [tok.eos_id, tok.pad_id, tok.pad_id]) == "Sure, here it is."


def test_header_ids_is_cached_but_not_shared(tiny_tokenizer):
  ids = tiny_tokenizer.header_ids("Human")
  ids.append(99)
  assert tiny_tokenizer.header_ids("Human") == tiny_tokenizer.encode("Human:")


def test_load_and_pickle(tiny_tokenizer, tmp_path):
  again = Tokenizer.load(tiny_tokenizer.path)
  text = ROUND_TRIP[3] + ROUND_TRIP[0]
  assert again.encode(text) == tiny_tokenizer.encode(text)
  copy = pickle.loads(pickle.dumps(tiny_tokenizer))
  assert copy.encode(text) == tiny_tokenizer.encode(text) and copy.path == tiny_tokenizer.path
  with pytest.raises(FileNotFoundError, match="no sentencepiece model"):
    Tokenizer.load(str(tmp_path / "missing.model"))


def _spm_model(tmp_path, name, **ids):
  (tmp_path / "c.txt").write_text("the quick brown fox jumps over a lazy dog\n" * 20)
  spm.SentencePieceTrainer.train(input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / name),
                                 vocab_size=30, minloglevel=2, **ids)
  return str(tmp_path / f"{name}.model")


def test_foreign_models_without_pad_or_bos(tmp_path):
  # sentencepiece defaults: unk=0, bos=1, eos=2, no pad
  tok = Tokenizer.load(_spm_model(tmp_path, "nopad"))
  assert tok.pad_id == tok.eos_id == 2 and tok.bos_id == 1
  assert tok.decode(tok.encode("a lazy fox", add_eos=True) + [tok.pad_id]) == "a lazy fox"
  with pytest.raises(ValueError, match="no bos or eos"):
    Tokenizer.load(_spm_model(tmp_path, "nobos", bos_id=-1))


def _fingerprint(tok):
  sp = tok._sp  # pylint: disable=protected-access
  return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(tok.vocab_size)]


def test_training_is_deterministic(tmp_path, dialogue_texts):
  texts = dialogue_texts[:400]
  a = train_tokenizer(texts, model_prefix=str(tmp_path / "a" / "tok"), vocab_size=400)
  b = train_tokenizer(iter(texts), model_prefix=str(tmp_path / "b" / "tok"), vocab_size=400)
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(texts), encoding="utf-8")
  c = train_tokenizer(input_file=str(corpus), model_prefix=str(tmp_path / "c"), vocab_size=400)
  assert _fingerprint(a) == _fingerprint(b) == _fingerprint(c)
  for text in texts[:20] + ROUND_TRIP:
    assert a.encode(text) == b.encode(text) == c.encode(text)
  assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["tok.model", "tok.vocab"]


def test_vocab_size_errors_are_explained(tmp_path, dialogue_texts):
  with pytest.raises(ValueError, match=r"vocab_size=100000 is too large.*at most \d+"):
    train_tokenizer(dialogue_texts[:50], model_prefix=str(tmp_path / "big"), vocab_size=100_000)
  with pytest.raises(ValueError, match=r"vocab_size=120 is too small.*byte_fallback=False"):
    train_tokenizer(dialogue_texts[:50], model_prefix=str(tmp_path / "small"), vocab_size=120)
  tok = train_tokenizer(dialogue_texts[:50], model_prefix=str(tmp_path / "nobytes"),
                        vocab_size=120, byte_fallback=False)
  assert tok.vocab_size == 120 and tok.decode(tok.encode("Human: hi")) == "Human: hi"


def test_bad_training_arguments(tmp_path):
  with pytest.raises(ValueError, match="exactly one"):
    train_tokenizer(model_prefix=str(tmp_path / "t"), vocab_size=300)
  with pytest.raises(ValueError, match="exactly one"):
    train_tokenizer(["x"], input_file="x.txt", model_prefix=str(tmp_path / "t"), vocab_size=300)
  with pytest.raises(ValueError, match="no non-empty text"):
    train_tokenizer(["", "\n\n"], model_prefix=str(tmp_path / "t"), vocab_size=300)
  with pytest.raises(FileNotFoundError):
    train_tokenizer(input_file=str(tmp_path / "none.txt"), model_prefix=str(tmp_path / "t"),
                    vocab_size=300)
  assert not list(tmp_path.glob("**/.spm_train_*"))
