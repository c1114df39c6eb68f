"""The Hugging Face tokenizer backend: chat templates against transformers, loss masks,
end-of-turn, the plain fallback layout and errors. Tiny tokenizers are trained here."""
import json
import os
import pickle

import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from cai_jax.data import hf_tokenizer
from cai_jax.data.dialogue import Turn
from cai_jax.data.hf_tokenizer import HFTokenizer
from cai_jax.data.tokenizer import DialogueTokenizer, Tokenizer

transformers = pytest.importorskip("transformers")

# Templates written for these tests, modeled on public formats.
CHATML = r"""{%- for message in messages %}
{%- if loop.first and message['role'] != 'system' %}
{{- '<|im_start|>system\nYou are a careful, harmless assistant.<|im_end|>\n' }}
{%- endif %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}"""

LLAMA3 = r"""{{- bos_token }}
{%- set year = strftime_now('%Y') %}
{{- '<|start_header_id|>system<|end_header_id|>\n\nToday is in ' + year + '.<|eot_id|>' }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
{{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"""

GEMMA = r"""{{- bos_token }}
{%- for message in messages %}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif %}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
{{- '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<start_of_turn>model\n' }}
{%- endif %}"""

# name: (pipeline, special tokens, tokenizer_config (template: where it is written),
#        generation_config eos names, end-of-turn, template trims contents)
STYLES = {
    "chatml": ("byte", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
               {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"},
               ("jinja", CHATML), ["<|im_end|>", "<|endoftext|>"], "<|im_end|>", False),
    "llama3": ("byte", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                        "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"],
               {"bos_token": {"__type": "AddedToken", "content": "<|begin_of_text|>",
                              "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": True},
                "eos_token": "<|end_of_text|>"},
               ("config", LLAMA3), ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
               "<|eot_id|>", True),
    "gemma": ("spm", ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
              {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
               "unk_token": "<unk>", "add_bos_token": True},
              ("list", GEMMA), ["<eos>", "<end_of_turn>"], "<end_of_turn>", True),
}
QUESTIONS = ["How do I fix my bread?", "  odd  spacing?\nnew line\n",
             "naïve café 🙂 (A) or (B)?", "", "Why does my lamp keep breaking?"]


def _byte_level(texts):
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=True)
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  return tok.to_str()


def _sentencepiece_like(texts):
  """Gemma's pipeline: spaces become "▁", no pre-tokenizer, byte fallback."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
  tok.normalizer = normalizers.Replace(" ", "\u2581")
  tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                   decoders.Fuse()])
  tok.train_from_iterator([t.replace(" ", "\u2581") for t in texts], trainers.BpeTrainer(
      vocab_size=500, special_tokens=["<unk>"], show_progress=False, max_token_length=8))
  data = json.loads(tok.to_str())
  vocab = data["model"]["vocab"]
  for b in range(256):
    vocab.setdefault(f"<0x{b:02X}>", len(vocab))
  return json.dumps(data)


@pytest.fixture(scope="module")
def pipelines(dialogue_texts):
  texts = [line for text in dialogue_texts[:300] for line in text.splitlines() if line]
  return {"byte": _byte_level(texts), "spm": _sentencepiece_like(texts)}


def _write_folder(folder, tok_json, specials, config, template=None, eos_names=(),
                  post_bos=None):
  """Writes a tokenizer folder; returns it."""
  tok = tokenizers.Tokenizer.from_str(tok_json)
  tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                          for s in specials])
  if post_bos:
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{post_bos} $A",
                                      special_tokens=[(post_bos, tok.token_to_id(post_bos))])])
  folder.mkdir(parents=True, exist_ok=True)
  tok.save(str(folder / "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
  if template is not None:
    where, text = template
    if where == "jinja":
      (folder / "chat_template.jinja").write_text(text, encoding="utf-8")
    else:
      config["chat_template"] = text if where == "config" else [
          {"name": "default", "template": text}, {"name": "tool_use", "template": "x"}]
  (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
  if eos_names:
    gen = {"eos_token_id": [tok.token_to_id(s) for s in eos_names]}
    (folder / "generation_config.json").write_text(json.dumps(gen), encoding="utf-8")
  return folder


@pytest.fixture(scope="module", params=sorted(STYLES))
def style(request, pipelines, tmp_path_factory):
  """(name, our tokenizer, transformers' tokenizer of the same folder)."""
  pipeline, specials, config, template, eos_names, _, _ = STYLES[request.param]
  folder = _write_folder(tmp_path_factory.mktemp(request.param), pipelines[pipeline], specials,
                         config, template, eos_names,
                         post_bos="<|begin_of_text|>" if request.param == "llama3" else None)
  tok = Tokenizer.load(str(folder))
  return request.param, tok, transformers.AutoTokenizer.from_pretrained(str(folder))


def _ref_ids(ref, messages, add_generation_prompt):
  out = ref.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
  return list(out["input_ids"] if hasattr(out, "keys") else out)


def _messages(turns):
  return [{"role": "assistant" if t.is_model else "user", "content": t.text} for t in turns]


def test_loads_the_hf_backend(style):
  name, tok, ref = style
  assert isinstance(tok, HFTokenizer) and isinstance(tok, DialogueTokenizer)
  assert tok.has_chat_template and os.path.isfile(os.path.join(tok.path, "tokenizer.json"))
  assert tok.vocab_size == len(ref)
  eot = STYLES[name][5]
  assert tok.eos_id == tok.token_id(eot) == ref.convert_tokens_to_ids(eot)
  want_stops = [eot] + [s for s in STYLES[name][4] if s != eot]
  assert tok.stop_ids == tuple(tok.token_id(s) for s in want_stops)
  assert tok.pad_id == (tok.token_id("<pad>") if name == "gemma" else tok.eos_id)
  assert tok.bos_id == ref.bos_token_id


@pytest.mark.parametrize("question", QUESTIONS)
def test_generation_prompt_matches_transformers(style, question):
  name, tok, ref = style
  enc = tok.encode_dialogue([Turn("Human", question)], open_role="Assistant")
  assert enc.ids == _ref_ids(ref, [{"role": "user", "content": question}], True)
  assert enc.loss_mask == [0] * len(enc.ids)
  if name != "chatml":  # the template writes bos (never a second one)
    assert enc.ids[0] == tok.bos_id != enc.ids[1]


def test_multi_turn_matches_transformers(style, dialogues):
  _, tok, ref = style
  odd = [Turn("Human", " (A) 語 ! "), Turn("Assistant", "  sure\n\n"), Turn("Human", "x")]
  for turns in dialogues[:40] + [odd]:
    assert tok.encode_dialogue(turns).ids == _ref_ids(ref, _messages(turns), False)
    prompt = tok.encode_dialogue(turns[:3], open_role="Critique")
    assert prompt.ids == _ref_ids(ref, _messages(turns[:3]), True)


def _runs(enc):
  runs, cur = [], []
  for i, m in zip(enc.ids, enc.loss_mask):
    if m:
      cur.append(i)
    elif cur:
      runs, cur = runs + [cur], []
  return runs + ([cur] if cur else [])


def test_loss_mask_is_assistant_contents_and_end_of_turn(style, dialogues):
  name, tok, _ = style
  raw = tokenizers.Tokenizer.from_file(f"{tok.path}/tokenizer.json")
  trims, eot = STYLES[name][6], STYLES[name][5]
  for turns in dialogues[:40] + [[Turn("Human", "hi"), Turn("Assistant", " two  spaces 🙂 ")]]:
    enc = tok.encode_dialogue(turns)
    runs = _runs(enc)
    contents = [t.text.strip() if trims else t.text for t in turns if t.is_model]
    assert [raw.decode(r, skip_special_tokens=False) for r in runs] == [
        c + eot for c in contents]
    assert all(r[-1] == tok.eos_id for r in runs)


def test_prompt_is_a_prefix_of_the_completed_conversation(style, dialogues):
  _, tok, _ = style
  for turns in dialogues[:40]:
    for k, turn in enumerate(turns):
      if not turn.is_model:
        continue
      prompt = tok.encode_dialogue(turns[:k], open_role=turn.role)
      full = tok.encode_dialogue(turns[:k + 1])
      n = len(prompt.ids)
      assert prompt.ids == full.ids[:n] and prompt.loss_mask == full.loss_mask[:n]
      assert full.loss_mask[n] == 1 and prompt.loss_mask[-1] == 0
      assert tok.decode_generated(full.ids[n:]) == turn.text


def test_same_side_turns_are_merged(style):
  name, tok, ref = style
  turns = [Turn("Human", "Tell me about bread."), Turn("CritiqueRequest", "Be brief."),
           Turn("Assistant", "Bread is baked."), Turn("Critique", "It is short.")]
  merged = [{"role": "user", "content": "Tell me about bread.\n\nBe brief."},
            {"role": "assistant", "content": "Bread is baked.\n\nIt is short."}]
  assert hf_tokenizer.chat_messages(turns) == merged
  enc = tok.encode_dialogue(turns)
  assert enc.ids == _ref_ids(ref, merged, False)
  assert tok.decode([i for i, m in zip(enc.ids, enc.loss_mask) if m]) == merged[1]["content"]
  if name == "gemma":  # the template itself rejects roles that do not alternate
    with pytest.raises(ValueError, match="must alternate"):
      tok.render_chat(_messages(turns))
    with pytest.raises(Exception, match="must alternate"):
      ref.apply_chat_template(_messages(turns))


@pytest.mark.parametrize("text", QUESTIONS + ["<bos> literal", "\n\nHuman: x\n"])
def test_encode_decode_round_trip(style, text):
  name, tok, ref = style
  ids = tok.encode(text)
  assert ids == ref.encode(text, add_special_tokens=False)
  assert all(0 <= i < tok.vocab_size for i in ids)
  if name != "gemma" or "<bos>" not in text:
    assert tok.decode(ids) == text
  framed = tok.encode(text, add_bos=True, add_eos=True)
  assert framed == [tok.bos_id] + ids + [tok.eos_id]
  assert tok.decode(framed + [tok.pad_id] + list(tok.stop_ids)) == tok.decode(ids)
  for bad in (-1, tok.vocab_size):
    with pytest.raises(ValueError, match="outside"):
      tok.decode(ids + [bad])


def test_decode_generated_cuts_at_any_stop_id(style):
  _, tok, _ = style
  body = tok.encode(" Sure, here it is. ")
  rest = tok.encode_dialogue([Turn("Human", "more")]).ids
  for stop in tok.stop_ids:
    assert tok.decode_generated(body + [stop] + rest) == "Sure, here it is."
  assert tok.decode_generated(body + [tok.vocab_size + 3]) == "Sure, here it is."
  assert tok.decode_body([tok.eos_id] + body) == ""


def test_open_role_must_be_model_side(style):
  _, tok, _ = style
  for role in ("Human", "CritiqueRequest", "RevisionRequest"):
    with pytest.raises(ValueError, match="human-side"):
      tok.encode_dialogue([Turn("Human", "hi")], open_role=role)
  with pytest.raises(ValueError, match="unknown dialogue role"):
    tok.encode_dialogue([], open_role="Narrator")


def test_single_token_and_piece_ids(style):
  name, tok, _ = style
  i = tok.token_id("\u2581brea" if name == "gemma" else "\u0120bread")
  assert tok.decode([i]) in (" brea", " bread")
  assert tok.single_token_id(tok.decode([i])) == i and tok.encode(tok.decode([i])) == [i]
  eot = STYLES[name][5]
  assert tok.single_token_id(eot) == tok.eos_id
  with pytest.raises(ValueError, match="not one known token"):
    tok.single_token_id("bread or butter")
  with pytest.raises(KeyError, match="not in the vocabulary"):
    tok.token_id("definitely-not-a-piece")


def test_pickle_and_tokenizer_json_path(style, dialogues):
  _, tok, _ = style
  copy = pickle.loads(pickle.dumps(tok))
  again = Tokenizer.load(f"{tok.path}/tokenizer.json")
  for other in (copy, again):
    assert other.encode_dialogue(dialogues[0]) == tok.encode_dialogue(dialogues[0])
    assert other.stop_ids == tok.stop_ids and other.path == tok.path


def test_no_template_uses_the_plain_layout(pipelines, tmp_path, dialogues):
  folder = _write_folder(tmp_path / "base", pipelines["byte"],
                         ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
                         {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
                         eos_names=["<|end_of_text|>", "<|eot_id|>"])
  tok = Tokenizer.load(str(folder))
  assert not tok.has_chat_template and tok.chat_template is None
  eos, bos = tok.token_id("<|end_of_text|>"), tok.token_id("<|begin_of_text|>")
  assert (tok.eos_id, tok.bos_id, tok.pad_id) == (eos, bos, eos)
  assert tok.stop_ids == (eos, tok.token_id("<|eot_id|>"))
  turns = dialogues[0]
  enc = tok.encode_dialogue(turns)
  want, mask = [bos], [0]
  for t in turns:
    body = tok.encode(t.text) + [eos]
    want += tok.header_ids(t.role) + body
    mask += [0] * len(tok.header_ids(t.role)) + [int(t.is_model)] * len(body)
  assert (enc.ids, enc.loss_mask) == (want, mask)
  assert tok.header_ids("Human") == tok.encode("Human:")
  prompt = tok.encode_dialogue(turns[:1], open_role="Assistant")
  assert prompt.ids == enc.ids[:len(prompt.ids)]
  assert tok.decode_generated(enc.ids[len(prompt.ids):]) == turns[1].text
  with pytest.raises(ValueError, match="no chat template"):
    tok.render_chat([{"role": "user", "content": "x"}])
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": False}))
  assert Tokenizer.load(str(folder)).encode_dialogue([]).ids == []


def test_clear_errors(pipelines, tmp_path):
  with pytest.raises(FileNotFoundError, match="missing"):
    Tokenizer.load(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="has no tokenizer.json.*expected a Hugging Face"):
    Tokenizer.load(str(tmp_path / "empty"))
  (tmp_path / "empty" / "tokenizer.model").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="sentencepiece model"):
    Tokenizer.load(str(tmp_path / "empty"))
  folder = _write_folder(tmp_path / "noeos", pipelines["byte"], ["<s>"], {})
  with pytest.raises(ValueError, match="no eos token"):
    Tokenizer.load(str(folder))
  folder = _write_folder(tmp_path / "badtok", pipelines["byte"], ["<s>"], {"eos_token": "</s>"})
  with pytest.raises(ValueError, match="not in its vocabulary"):
    Tokenizer.load(str(folder))
  folder = _write_folder(tmp_path / "syntax", pipelines["byte"], ["<s>"], {"eos_token": "<s>"},
                         ("jinja", "{% for m in messages %}"))
  with pytest.raises(ValueError, match="does not compile"):
    Tokenizer.load(str(folder))


def test_templates_that_hide_contents_or_turn_ends(pipelines, tmp_path):
  folder = _write_folder(tmp_path / "noend", pipelines["byte"], ["<|im_start|>", "</s>"],
                         {"eos_token": "</s>"},
                         ("jinja", "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                                   "{{ m['content'] }}\n{% endfor %}"))
  tok = Tokenizer.load(str(folder))
  assert tok.eos_id == tok.token_id("</s>")  # the template writes no end-of-turn token
  assert tok.encode_dialogue([Turn("Human", "hi")]).ids  # nothing to mask: fine
  with pytest.raises(ValueError, match="does not close an assistant message"):
    tok.encode_dialogue([Turn("Human", "hi"), Turn("Assistant", "yo"), Turn("Human", "ok")])
  folder = _write_folder(tmp_path / "peeks", pipelines["byte"], ["</s>"], {"eos_token": "</s>"},
                         ("jinja", "{% for m in messages %}{% if m['content'] | length > 6 %}"
                                   "LONG{% endif %}{{ m['content'] }}</s>{% endfor %}"))
  tok = Tokenizer.load(str(folder))
  enc = tok.encode_dialogue([Turn("Human", "hi"), Turn("Assistant", "yo")])
  n = len(tok.encode("yo")) + 1
  assert enc.loss_mask[-n:] == [1] * n and sum(enc.loss_mask) == n
  with pytest.raises(ValueError, match="cannot locate the message contents"):
    tok.encode_dialogue([Turn("Human", "hello there")])


def test_template_environment():
  render = lambda src, **kw: hf_tokenizer.compile_chat_template(src).render(**kw)
  assert render("{{ x | tojson }}", x={"a": "<é>"}) == '{"a": "<é>"}'
  assert render("{% generation %}hi{% endgeneration %}") == "hi"
  assert render("{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}"
                "{% endfor %}") == "01"
  assert len(render("{{ strftime_now('%Y') }}")) == 4
  with pytest.raises(Exception, match="boom"):
    render("{{ raise_exception('boom') }}")


def test_sentencepiece_models_still_load(tiny_tokenizer):
  tok = Tokenizer.load(tiny_tokenizer.path)
  assert type(tok) is Tokenizer and isinstance(tok, DialogueTokenizer)
  assert tok.stop_ids == (tok.eos_id,) and not tok.has_chat_template
  turns = [Turn("Human", "hi"), Turn("Assistant", "there")]
  assert tok.encode_dialogue(turns) == tiny_tokenizer.encode_dialogue(turns)
