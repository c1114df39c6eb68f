"""Hugging Face tokenizer folders (``tokenizer.json``), with or without a chat template.

``HFTokenizer`` has the interface of ``cai_jax.data.tokenizer.DialogueTokenizer``; load
it with ``Tokenizer.load(folder)``. It reads:

* ``tokenizer.json`` (the ``tokenizers`` library does the encoding);
* ``tokenizer_config.json`` (or the legacy ``special_tokens_map.json``): the special
  tokens (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``, ...; a string or a
  dict with ``"content"``), ``add_bos_token`` and possibly ``chat_template``;
* ``generation_config.json`` (else ``config.json``): ``eos_token_id`` (an int or a
  list), ``bos_token_id``, ``pad_token_id``;
* ``chat_template.jinja``, which wins over the config's ``chat_template`` (a string, or
  a list of ``{name, template}`` of which ``"default"`` is used).

With a chat template, a conversation is rendered through it (jinja2 in a sandbox with
the globals and filters chat templates expect) and the whole string is tokenized at once
without added special tokens, which gives exactly the ids of transformers'
``apply_chat_template``. Human-side roles (``Human``, ``CritiqueRequest``,
``RevisionRequest``) become ``"user"`` messages and model-side roles (``Assistant``,
``Critique``, ``Revision``) ``"assistant"`` messages; consecutive turns of the same side
are merged into one message, their texts joined with ``"\\n\\n"``, since many templates
(Gemma's, Mistral's) reject roles that do not alternate. ``eos_id`` is the template's
end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ...).

Without a chat template (a base model's folder) the plain layout of
``DialogueTokenizer.encode_dialogue`` is used, with the tokenizer's eos token as
end-of-turn.
"""
from __future__ import annotations

import bisect
import datetime
import functools
import json
import re
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers

from cai_jax import paths
from cai_jax.data.dialogue import MODEL_ROLES, ROLES, Turn
from cai_jax.data.tokenizer import DialogueTokenizer, EncodedDialogue

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                      "cls_token", "mask_token")
"""The named special tokens a chat template sees as variables (as transformers passes)."""
_MARK, _MARK_RE = "\ue000{}\ue001", re.compile("\ue000(\\d+)\ue001")  # private-use characters


def _read_json(folder: str, name: str) -> dict[str, Any]:
  """A folder's JSON file as a dict; ``{}`` if the file is missing."""
  path = paths.join(folder, name)
  if not paths.isfile(path):
    return {}
  try:
    with paths.open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object")
  return data


def _token_text(value: Any) -> str | None:
  """A special token as written in a config: a string, or a dict with ``"content"``."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _id_list(value: Any) -> list[int]:
  """An ``*_token_id`` config value (an int, a list of ints, or null) as a list."""
  if value is None:
    return []
  return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _template_source(folder: str, config: Mapping[str, Any]) -> str | None:
  """The folder's default chat template, or None."""
  path = paths.join(folder, "chat_template.jinja")
  if paths.isfile(path):
    return paths.read_text(path)
  template = config.get("chat_template")
  if isinstance(template, (list, tuple)):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if "default" not in named:
      raise ValueError(f"tokenizer_config.json in {folder} has chat templates {sorted(named)} "
                       "but none named 'default'")
    template = named["default"]
  return template if isinstance(template, str) and template else None


class _GenerationTag(jinja2.ext.Extension):
  """``{% generation %}...{% endgeneration %}`` (marks assistant text in some templates):
  renders its body unchanged."""

  tags = {"generation"}

  def parse(self, parser):
    next(parser.stream)
    return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
  """JSON without jinja's HTML escaping (what chat templates are written against)."""
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
  """Compiles a chat template in a sandbox, as Hugging Face templates expect: trimmed
  blocks, ``raise_exception`` and ``strftime_now`` globals, a ``tojson`` filter that does
  not escape HTML, loop controls and a pass-through ``{% generation %}`` tag.

  Raises:
    ValueError: on a template syntax error.
  """
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  try:
    return env.from_string(source)
  except jinja2.TemplateSyntaxError as e:
    raise ValueError(f"chat template does not compile: {e}") from e


def chat_messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
  """Turns as chat messages: human-side roles are "user", model-side roles "assistant";
  consecutive turns of one side are merged, their texts joined with ``"\\n\\n"``."""
  messages: list[dict[str, str]] = []
  for turn in turns:
    role = "assistant" if turn.role in MODEL_ROLES else "user"
    if messages and messages[-1]["role"] == role:
      messages[-1]["content"] += "\n\n" + turn.text
    else:
      messages.append({"role": role, "content": turn.text})
  return messages


def _content_spans(marked: str, rendered: str, contents: Sequence[str]) -> list[tuple[int, int]]:
  """Character span of each message's content in ``rendered``.

  ``marked`` is the same conversation rendered with each content replaced by a marker
  (``"\\ue000{k}\\ue001"``), so it is the template's glue with markers in between:
  ``glue_0 M_0 glue_1 M_1 ... glue_n``. ``rendered`` must be the same glue with each
  content (or the content stripped, for templates that ``trim`` it) in place of the
  markers; anything else (a template whose glue depends on the content, or that drops or
  repeats a message) raises ValueError.
  """
  parts = _MARK_RE.split(marked)
  glue, order = parts[0::2], [int(k) for k in parts[1::2]]
  if order != list(range(len(contents))):
    raise ValueError(f"the chat template renders message contents in the order {order}, not "
                     f"once each in order ({len(contents)} messages)")
  spans, pos = [], 0
  for k, text in enumerate(contents):
    if not rendered.startswith(glue[k], pos):
      break
    pos += len(glue[k])
    for cand in dict.fromkeys((text, text.strip(), text.lstrip(), text.rstrip())):
      end = pos + len(cand)
      if rendered.startswith(cand, pos) and rendered.startswith(glue[k + 1], end):
        spans.append((pos, end))
        pos = end
        break
    else:
      break
  if len(spans) != len(contents) or rendered[pos:] != glue[-1]:
    raise ValueError("cannot locate the message contents in the rendered chat: the chat "
                     "template changes them, or renders differently depending on them")
  return spans


class HFTokenizer(DialogueTokenizer):
  """A Hugging Face tokenizer with its special tokens and (optional) chat template.

  ``eos_id`` is the end-of-turn token: with a chat template, the added token the template
  writes right after an assistant message's content (found by rendering
  ``[user "Hi", assistant "Hello"]``); without one, the tokenizer's eos token.
  ``stop_ids`` is ``eos_id`` followed by every other eos id of the configs. ``pad_id`` is
  the pad token, else ``eos_id``. ``bos_id`` and ``unk_id`` may be None.
  ``vocab_size`` counts added tokens. ``decode`` skips pad/bos/stop ids and every added
  special token.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, path: str = "",
               special_tokens: Mapping[str, str] | None = None, bos_id: int | None = None,
               eos_ids: Sequence[int] = (), pad_id: int | None = None,
               add_bos_token: bool | None = None, chat_template: str | None = None):
    """Wraps a ``tokenizers.Tokenizer``; prefer ``Tokenizer.load(folder)``.

    The tokenizer is taken over: its post-processor, truncation and padding are removed
    (ids are always encoded without added special tokens, where a post-processor only
    changes offsets, which the loss mask needs untrimmed).

    Args:
      tokenizer: the tokenizer.
      path: the folder it came from.
      special_tokens: named special tokens (``SPECIAL_TOKEN_KEYS``) as text; a chat
        template sees them as variables.
      bos_id: the bos id when ``special_tokens`` has no ``bos_token``.
      eos_ids: eos ids of the generation config, the first used as eos when
        ``special_tokens`` has no ``eos_token``.
      pad_id: the pad id when ``special_tokens`` has no ``pad_token``.
      add_bos_token: False if the model takes no bos (then ``add_bos`` adds none).
      chat_template: the chat template's jinja source.

    Raises:
      ValueError: if a named special token is not in the vocabulary, or there is no
        end-of-turn token, or the chat template does not compile or render.
    """
    tokenizer.post_processor = None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    self._tok, self._path, self._headers = tokenizer, path, {}
    self._specials = dict(special_tokens or {})
    added = tokenizer.get_added_tokens_decoder()
    self._vocab_size = max([tokenizer.get_vocab_size(with_added_tokens=True)] +
                           [i + 1 for i in added])
    ids = {key: self._special_id(key) for key in ("bos_token", "eos_token", "pad_token",
                                                   "unk_token")}
    self._bos_id = ids["bos_token"] if ids["bos_token"] is not None else bos_id
    self._unk_id = ids["unk_token"]
    self._adds_bos = add_bos_token is not False
    self._template = chat_template
    end_of_turn = self._find_end_of_turn() if chat_template is not None else None
    base_eos = ids["eos_token"] if ids["eos_token"] is not None else next(iter(eos_ids), None)
    eos = end_of_turn if end_of_turn is not None else base_eos
    if eos is None:
      raise ValueError(f"tokenizer {path!r} has no eos token (tokenizer_config.json eos_token "
                       "or generation_config.json eos_token_id) and no chat template; the "
                       "dialogue layout needs an end-of-turn token")
    self._eos_id = eos
    self._stop_ids = tuple(dict.fromkeys(i for i in (eos, base_eos, *eos_ids) if i is not None))
    pad = ids["pad_token"] if ids["pad_token"] is not None else pad_id
    self._pad_id = pad if pad is not None else eos
    skip = {self._pad_id, self._bos_id, *self._stop_ids, *(i for i, t in added.items()
                                                            if t.special)}
    self._skip = frozenset(skip - {None})

  def _special_id(self, key: str) -> int | None:
    """The id of a named special token; None if the config names none."""
    text = self._specials.get(key)
    if text is None:
      return None
    i = self._tok.token_to_id(text)
    if i is None:
      raise ValueError(f"{key} {text!r} of tokenizer {self._path!r} is not in its vocabulary")
    return i

  @classmethod
  def from_folder(cls, folder: str) -> HFTokenizer:
    """Loads a Hugging Face tokenizer folder (see the module docstring).

    Raises:
      FileNotFoundError: if ``folder`` is not a folder or has no ``tokenizer.json``.
      ValueError: on unreadable configs or inconsistent special tokens.
    """
    folder = paths.absolute(folder)   # local or a URL (gs://...)
    if not paths.isdir(folder):
      raise FileNotFoundError(f"no Hugging Face tokenizer folder at {folder!r}")
    if not paths.isfile(paths.join(folder, "tokenizer.json")):
      spm_hint = (" (it has tokenizer.model: pass that file's path to load it as a sentencepiece "
                  "model)" if paths.isfile(paths.join(folder, "tokenizer.model")) else "")
      raise FileNotFoundError(
          f"{folder!r} has no tokenizer.json: expected a Hugging Face tokenizer folder "
          f"(tokenizer.json, tokenizer_config.json, ...) or a sentencepiece .model "
          f"file{spm_hint}")
    config = _read_json(folder, "tokenizer_config.json")
    legacy = _read_json(folder, "special_tokens_map.json")
    specials = {}
    for key in SPECIAL_TOKEN_KEYS:
      text = _token_text(config[key]) if key in config else _token_text(legacy.get(key))
      if text is not None:
        specials[key] = text
    ids = _read_json(folder, "generation_config.json") or _read_json(folder, "config.json")
    first = {key: next(iter(_id_list(ids.get(key))), None)
             for key in ("bos_token_id", "pad_token_id")}
    try:
      tok = tokenizers.Tokenizer.from_str(paths.read_text(paths.join(folder, "tokenizer.json")))
    except Exception as e:  # the Rust side raises plain Exceptions
      raise ValueError(f"cannot read {folder}/tokenizer.json: {e}") from e
    return cls(tok, path=folder, special_tokens=specials, bos_id=first["bos_token_id"],
               eos_ids=_id_list(ids.get("eos_token_id")), pad_id=first["pad_token_id"],
               add_bos_token=config.get("add_bos_token"),
               chat_template=_template_source(folder, config))

  @property
  def has_chat_template(self) -> bool:
    return self._template is not None

  @property
  def chat_template(self) -> str | None:
    """The chat template's jinja source, or None."""
    return self._template

  def _encode_text(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def _decode_ids(self, ids: list[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=True)

  def _pieces(self, ids: Sequence[int]) -> list[str]:
    return [self._tok.id_to_token(i) for i in ids]

  def token_id(self, piece: str) -> int:
    """Returns the id of a vocabulary piece (e.g. ``"ĠYes"``) or added token.

    Raises:
      KeyError: if the piece is not in the vocabulary.
    """
    i = self._tok.token_to_id(piece)
    if i is None:
      raise KeyError(f"piece {piece!r} is not in the vocabulary")
    return i

  def render_chat(self, messages: Sequence[Mapping[str, str]], *,
                  add_generation_prompt: bool = False) -> str:
    """Renders chat messages (``{"role", "content"}``) through the chat template.

    The template sees ``messages``, ``tools=None``, ``documents=None``,
    ``add_generation_prompt`` and the named special tokens (``bos_token``, ...).

    Raises:
      ValueError: if there is no chat template or it rejects the conversation.
    """
    if self._template is None:
      raise ValueError(f"tokenizer {self._path!r} has no chat template")
    try:
      return compile_chat_template(self._template).render(
          messages=[dict(m) for m in messages], tools=None, documents=None,
          add_generation_prompt=add_generation_prompt, **self._specials)
    except jinja2.TemplateError as e:
      roles = [m["role"] for m in messages]
      raise ValueError(f"the chat template of {self._path!r} rejects the messages {roles}: "
                       f"{e}") from e

  def _render_spans(self, messages: list[dict[str, str]], add_generation_prompt: bool):
    """The rendered chat, its encoding and each message content's character span."""
    for m in messages:
      if "\ue000" in m["content"] or "\ue001" in m["content"]:
        raise ValueError("message contents may not hold the characters U+E000 and U+E001")
    rendered = self.render_chat(messages, add_generation_prompt=add_generation_prompt)
    marked = self.render_chat([{**m, "content": _MARK.format(k)} for k, m in enumerate(messages)],
                              add_generation_prompt=add_generation_prompt)
    spans = _content_spans(marked, rendered, [m["content"] for m in messages])
    return rendered, self._tok.encode(rendered, add_special_tokens=False), spans

  @staticmethod
  def _closing_token(enc: tokenizers.Encoding, rendered: str, end: int,
                     wanted: frozenset[int] | set[int]) -> int | None:
    """Index of the first token at or after character ``end`` if it is in ``wanted``,
    skipping whitespace-only tokens; else None."""
    ids, offsets = enc.ids, enc.offsets
    for t in range(bisect.bisect_left([s for s, _ in offsets], end), len(ids)):
      if ids[t] in wanted:
        return t
      s, e = offsets[t]
      if rendered[s:e].strip():
        return None
    return None

  def _find_end_of_turn(self) -> int | None:
    """The added token the template writes right after an assistant's content, or None."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rendered, enc, spans = self._render_spans(messages, False)
    added = frozenset(i for i, t in self._tok.get_added_tokens_decoder().items()
                      if t.content.strip())
    t = self._closing_token(enc, rendered, spans[1][1], added)
    return None if t is None else enc.ids[t]

  def encode_dialogue(self, turns: Sequence[Turn], *, open_role: str | None = None,
                      add_bos: bool = True) -> EncodedDialogue:
    """Encodes a conversation, through the chat template if there is one.

    Without a template this is the plain layout (``DialogueTokenizer.encode_dialogue``).
    With one, the turns become chat messages (``chat_messages``: same-side turns merged),
    the template renders them, and the whole string is tokenized at once without added
    special tokens: the ids equal transformers' ``apply_chat_template``.

    The loss mask is 1 exactly on the tokens of each assistant message's content and
    the end-of-turn (stop) token that closes it. The content's character span is found
    by rendering the conversation a second time with each content replaced by a marker
    (see ``_content_spans``), and tokens are mapped to it by their character offsets; a
    token that straddles the content's edge counts as content.

    Args:
      turns: the conversation.
      open_role: if given, a model-side role: the prompt ends with the template's
        generation prompt (the assistant header), where the model continues. (After a
        model-side last turn, the prompt opens a new assistant message, so it is not a
        prefix of the conversation completed with that turn, which merges the two.)
      add_bos: without a template, start with the bos id. With one, ignored: the
        template decides whether the ids start with bos (no second bos is ever added,
        and none is removed: in some vocabularies the bos token also opens every turn).

    Raises:
      ValueError: on an unknown or human-side ``open_role`` (with a template), or if the
        template rejects the conversation or hides where the contents are.
    """
    if self._template is None:
      return super().encode_dialogue(turns, open_role=open_role, add_bos=add_bos)
    if open_role is not None and open_role not in ROLES:
      raise ValueError(f"unknown dialogue role {open_role!r}; expected one of {ROLES}")
    if open_role is not None and open_role not in MODEL_ROLES:
      raise ValueError(f"open_role {open_role!r} is a human-side role; with a chat template a "
                       f"prompt opens a model-side turn ({sorted(MODEL_ROLES)}), rendered as "
                       "the generation prompt")
    messages = chat_messages(turns)
    rendered, enc, spans = self._render_spans(messages, open_role is not None)
    ids, offsets = list(enc.ids), enc.offsets
    mask = [0] * len(ids)
    stop = frozenset(self._stop_ids)
    for message, (start, end) in zip(messages, spans):
      if message["role"] != "assistant":
        continue
      for t, (s, e) in enumerate(offsets):
        if s < end and e > start:
          mask[t] = 1
      t = self._closing_token(enc, rendered, end, stop)
      if t is None:
        raise ValueError(f"the chat template of {self._path!r} does not close an assistant "
                         f"message with an end-of-turn token {self._stop_ids}: after "
                         f"{rendered[max(start, end - 20):end]!r} comes {rendered[end:end + 30]!r}")
      mask[t] = 1
    return EncodedDialogue(ids=ids, loss_mask=mask)
