"""Tokenizers: the shared interface, sentencepiece (training a small one, loading any
``.model``) and the plain dialogue layout.

``Tokenizer.load`` is the one entry point: a sentencepiece ``.model`` file gives a
``Tokenizer``, a Hugging Face folder (``tokenizer.json``) a
``cai_jax.data.hf_tokenizer.HFTokenizer``, which renders dialogues through the folder's
chat template when it has one. Both share ``DialogueTokenizer``'s interface.

Plain token layout of a conversation (see ``cai_jax.data.dialogue``): ``[bos]``, then per
turn ``header_ids(role) + encode(body) + [eos]``. The header (``"Human:"``) and the
body are encoded separately, so a prompt that ends in an open header tokenizes exactly
like the same prefix of a training sequence, and a model continues it with a body.

Models trained here use the fixed special ids pad=0, unk=1, bos=2, eos=3, byte fallback
(any unicode text round-trips exactly) and no normalisation (``decode(encode(s)) == s``).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from typing import Iterable, Sequence

import sentencepiece as spm

from cai_jax import paths
from cai_jax.data.dialogue import MODEL_ROLES, ROLES, Turn

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_WORD_START = "\u2581"  # sentencepiece's word-boundary marker "▁"


@dataclasses.dataclass(frozen=True)
class EncodedDialogue:
  """Token ids of a conversation and a 0/1 mask of the tokens the model writes."""

  ids: list[int]
  loss_mask: list[int]

  def __post_init__(self):
    if len(self.ids) != len(self.loss_mask):
      raise ValueError(f"ids ({len(self.ids)}) and loss_mask ({len(self.loss_mask)}) differ")


class DialogueTokenizer:
  """The interface every tokenizer backend offers programs, and the plain dialogue layout.

  Backends: ``Tokenizer`` (a sentencepiece ``.model``) and
  ``cai_jax.data.hf_tokenizer.HFTokenizer`` (a Hugging Face folder, possibly with a chat
  template). ``Tokenizer.load`` picks one from the path. A backend sets ``_path``,
  ``_vocab_size``, ``_pad_id``, ``_unk_id``, ``_bos_id``, ``_eos_id``, ``_stop_ids`` and
  ``_skip`` (ids ``decode`` drops) and implements ``_encode_text``, ``_decode_ids`` and
  ``token_id``.
  """

  _adds_bos = True  # whether ``add_bos`` adds the bos id (the tokenizer must have one)
  _headers: dict[str, tuple[int, ...]]

  @staticmethod
  def load(path: str) -> DialogueTokenizer:
    """Loads a tokenizer: a sentencepiece ``.model`` file or a Hugging Face folder.

    A folder (or its ``tokenizer.json``) loads as
    ``cai_jax.data.hf_tokenizer.HFTokenizer``; any other path as a sentencepiece model.

    Raises:
      FileNotFoundError: if ``path`` does not exist, or is a folder without ``tokenizer.json``.
    """
    path = paths.absolute(path)   # local or a URL (gs://...)
    if paths.isdir(path) or paths.basename(path) == "tokenizer.json":
      # imported here: sentencepiece users need neither `tokenizers` nor jinja2
      from cai_jax.data import hf_tokenizer  # pylint: disable=import-outside-toplevel
      folder = path if paths.isdir(path) else paths.dirname(path)
      return hf_tokenizer.HFTokenizer.from_folder(folder)
    if not paths.isfile(path):
      raise FileNotFoundError(f"no sentencepiece model (a .model file) or Hugging Face tokenizer "
                              f"folder (with tokenizer.json) at {path!r}")
    if not paths.is_local(path):
      return Tokenizer(spm.SentencePieceProcessor(model_proto=paths.read_bytes(path)), path)
    return Tokenizer(spm.SentencePieceProcessor(model_file=path), path)

  @property
  def path(self) -> str:
    return self._path

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def unk_id(self) -> int | None:
    """The unknown-piece id (None for a Hugging Face vocabulary without one)."""
    return self._unk_id

  @property
  def bos_id(self) -> int | None:
    """The bos id (None for a Hugging Face vocabulary without one)."""
    return self._bos_id

  @property
  def eos_id(self) -> int:
    """The end-of-turn id: what closes every turn, and what a sampler stops on."""
    return self._eos_id

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end a generated turn, ``eos_id`` first."""
    return self._stop_ids

  @property
  def has_chat_template(self) -> bool:
    """True if ``encode_dialogue`` renders through a chat template (not the plain layout)."""
    return False

  def _encode_text(self, text: str) -> list[int]:
    raise NotImplementedError

  def _decode_ids(self, ids: list[int]) -> str:
    raise NotImplementedError

  def token_id(self, piece: str) -> int:
    raise NotImplementedError

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    """Encodes text to ids, optionally framed by bos/eos (no other special tokens)."""
    return self._bos_ids(add_bos) + self._encode_text(text) + ([self._eos_id] if add_eos else [])

  def _bos_ids(self, add_bos: bool) -> list[int]:
    return [self._bos_id] if add_bos and self._adds_bos and self._bos_id is not None else []

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids to text, skipping pad/bos/eos (and the backend's other special) ids.

    Raises:
      ValueError: on an id outside ``[0, vocab_size)``.
    """
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self._vocab_size]
    if bad:
      raise ValueError(f"ids {bad[:8]} are outside [0, {self._vocab_size})")
    return self._decode_ids([i for i in ids if i not in self._skip])

  def _pieces(self, ids: Sequence[int]) -> list[str]:
    """Vocabulary pieces of ids, for error messages."""
    return [str(i) for i in ids]

  def single_token_id(self, text: str) -> int:
    """The one id that ``encode(text)`` gives, e.g. an option label a judge scores.

    Raises:
      ValueError: if ``text`` does not encode to exactly one (known) token.
    """
    ids = self.encode(text)
    if len(ids) == 1 and ids[0] != self._unk_id:
      return ids[0]
    hint = ""
    if text and not text[0].isspace() and len(spaced := self.encode(" " + text)) == 1:
      hint = f" (but {' ' + text!r} is: {self._pieces(spaced)})"
    raise ValueError(f"{text!r} encodes to {len(ids)} tokens {self._pieces(ids)}, not one known "
                     f"token{hint}")

  def header_ids(self, role: str) -> list[int]:
    """Ids of a turn header of the plain layout, ``encode(f"{role}:")`` (cached)."""
    if role not in self._headers:
      self._headers[role] = tuple(self.encode(f"{role}:"))
    return list(self._headers[role])

  def encode_dialogue(self, turns: Sequence[Turn], *, open_role: str | None = None,
                      add_bos: bool = True) -> EncodedDialogue:
    """Encodes a conversation: ``[bos]``, then ``header + body + [eos]`` per turn.

    Args:
      turns: the conversation.
      open_role: if given, appends this role's header (mask 0), the point where a
        model continues with the body.
      add_bos: start with the bos id.

    Returns:
      The ids and a loss mask that is 1 exactly on the body and eos tokens of turns
      whose role is in ``MODEL_ROLES``.
    """
    ids = self._bos_ids(add_bos)
    mask = [0] * len(ids)
    for turn in turns:
      header = self.header_ids(turn.role)
      body = self.encode(turn.text) + [self._eos_id]
      ids += header + body
      mask += [0] * len(header) + [int(turn.role in MODEL_ROLES)] * len(body)
    if open_role is not None:
      if open_role not in ROLES:
        raise ValueError(f"unknown dialogue role {open_role!r}; expected one of {ROLES}")
      header = self.header_ids(open_role)
      ids += header
      mask += [0] * len(header)
    return EncodedDialogue(ids=ids, loss_mask=mask)

  def decode_body(self, ids: Iterable[int]) -> str:
    """Decodes generated body ids, cutting at the first stop id (end of turn)."""
    ids = [int(i) for i in ids]
    stop = set(self._stop_ids)
    cut = next((k for k, i in enumerate(ids) if i in stop), len(ids))
    return self.decode(ids[:cut])

  def decode_generated(self, ids: Iterable[int]) -> str:
    """A generated turn's text: cut at the end of turn, stripped. Ids past the
    vocabulary (a model vocabulary padded for sharding can sample them) decode to
    nothing; every program decodes sampled ids through this method."""
    return self.decode_body([i for i in ids if 0 <= int(i) < self._vocab_size]).strip()


class Tokenizer(DialogueTokenizer):
  """A sentencepiece model with the dialogue token layout.

  If the model defines no pad id (sentencepiece reports -1), ``pad_id`` is ``eos_id``:
  padding is always masked out of losses, so sharing the id is harmless. ``stop_ids``
  is ``(eos_id,)``; there is no chat template.
  """

  def __init__(self, processor: spm.SentencePieceProcessor, path: str = ""):
    """Wraps a loaded processor; prefer ``Tokenizer.load``.

    Raises:
      ValueError: if the model has no bos or eos id.
    """
    self._sp = processor
    self._path = path
    self._vocab_size = processor.get_piece_size()
    self._unk_id = processor.unk_id()
    self._bos_id = processor.bos_id()
    self._eos_id = processor.eos_id()
    if self._bos_id < 0 or self._eos_id < 0:
      raise ValueError(f"sentencepiece model {path!r} has no bos or eos id (bos={self._bos_id}, "
                       f"eos={self._eos_id}); the dialogue layout needs both")
    pad = processor.pad_id()
    self._pad_id = pad if pad >= 0 else self._eos_id
    self._stop_ids = (self._eos_id,)
    self._skip = frozenset({self._pad_id, self._bos_id, self._eos_id})
    self._headers = {}

  def _encode_text(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def _decode_ids(self, ids: list[int]) -> str:
    return self._sp.decode(ids)

  def _pieces(self, ids: Sequence[int]) -> list[str]:
    return [self._sp.id_to_piece(i) for i in ids]

  def token_id(self, piece: str) -> int:
    """Returns the id of a vocabulary piece (e.g. ``"(A)"``, ``"▁(A)"``, ``"<0x0A>"``).

    Raises:
      KeyError: if the piece is not in the vocabulary.
    """
    i = self._sp.piece_to_id(piece)
    if i == self._unk_id and piece != self._sp.id_to_piece(self._unk_id):
      raise KeyError(f"piece {piece!r} is not in the vocabulary")
    return i


def train_tokenizer(texts: Iterable[str] | None = None, *, input_file: str | None = None,
                    model_prefix: str, vocab_size: int, model_type: str = "bpe",
                    user_defined_symbols: Sequence[str] = ("(A)", "(B)"),
                    byte_fallback: bool = True, seed: int = 0, num_threads: int = 2,
                    input_sentence_size: int = 1_000_000) -> Tokenizer:
  """Trains a sentencepiece model, writes ``{model_prefix}.model``/``.vocab``, loads it.

  Training is deterministic for a given input and arguments. Sentencepiece reads
  sentences line by line, so ``texts`` are split at newlines (a newline itself is
  then encoded with byte fallback).

  Args:
    texts: training text (e.g. rendered conversations); or give ``input_file``.
    input_file: a text file with one sentence per line.
    model_prefix: output path without extension; its folder is created.
    vocab_size: number of pieces, including the 4 specials, the user-defined symbols
      and (with byte fallback) 256 byte pieces.
    model_type: "bpe", "unigram", "char" or "word".
    user_defined_symbols: pieces always kept whole. Each one is also added with a
      leading "▁" (sentencepiece's word start), so that e.g. ``encode("(A)")`` and the
      "(A)" in ``encode("is (A)")`` are single tokens.
    byte_fallback: encode unseen characters as UTF-8 bytes (exact round trips); needs
      ``vocab_size`` above ~260 plus the number of distinct characters.
    seed: seed of sentencepiece's sentence sampling.
    num_threads: trainer threads.
    input_sentence_size: at most this many sentences are sampled for training.

  Raises:
    ValueError: on bad arguments, empty text, or a vocab_size the text cannot support.
    FileNotFoundError: if ``input_file`` does not exist.
  """
  if (texts is None) == (input_file is None):
    raise ValueError("give exactly one of texts and input_file")
  if input_file is not None and not os.path.isfile(input_file):
    raise FileNotFoundError(f"no training text at {input_file!r}")
  if isinstance(texts, str):
    texts = [texts]
  model_prefix = os.path.abspath(os.fspath(model_prefix))
  folder = os.path.dirname(model_prefix)
  os.makedirs(folder, exist_ok=True)
  symbols = list(dict.fromkeys(
      s for sym in user_defined_symbols
      for s in (sym, sym if sym.startswith(_WORD_START) else _WORD_START + sym)))
  tmp = None
  try:
    if texts is not None:
      with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, suffix=".txt",
                                       prefix=".spm_train_", delete=False) as f:
        tmp = input_file = f.name
        n = 0
        for text in texts:
          for line in text.splitlines():
            if line.strip():
              f.write(line + "\n")
              n += 1
      if not n:
        raise ValueError("train_tokenizer got no non-empty text")
    spm.set_random_generator_seed(seed)
    try:
      spm.SentencePieceTrainer.train(
          input=input_file, model_prefix=model_prefix, vocab_size=vocab_size,
          model_type=model_type, user_defined_symbols=symbols, byte_fallback=byte_fallback,
          character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
          normalization_rule_name="identity", remove_extra_whitespaces=False,
          input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
          num_threads=num_threads, minloglevel=2)
    except RuntimeError as e:
      raise _vocab_error(str(e), vocab_size, byte_fallback) from e
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
  return Tokenizer.load(model_prefix + ".model")


def _vocab_error(msg: str, vocab_size: int, byte_fallback: bool) -> Exception:
  """Turns sentencepiece's vocab-size RuntimeErrors into a ValueError with advice."""
  if m := re.search(r"Vocabulary size too high.*<= *(\d+)", msg):
    return ValueError(
        f"vocab_size={vocab_size} is too large for this training text: it supports at "
        f"most {m.group(1)} pieces. Lower vocab_size or give more (varied) text.")
  if m := re.search(r"smaller than required_chars\. *\d+ vs (\d+)", msg):
    hint = " (256 of them byte-fallback pieces; or pass byte_fallback=False)" \
        if byte_fallback else ""
    return ValueError(
        f"vocab_size={vocab_size} is too small: the specials, user-defined symbols and "
        f"characters of the text need {m.group(1)} pieces{hint}. Raise vocab_size.")
  return RuntimeError(f"sentencepiece training failed: {msg}")
