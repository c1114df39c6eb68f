"""Shared inputs of the trainer program tests (sft, preference model, DPO, PPO).

A tiny world of twelve words and two answer styles: polite answers (``GOOD``) are the
chosen ones, rude answers (``BAD``) the rejected ones. The fixtures give the words, the
pair writer, conversations in both styles, a tokenizer trained on exactly that text, the
320-vocab model config and a saved random LM (session-scoped: built once, read only); and
``bpe_folder``, a tiny byte-level BPE ``tokenizer.json`` with a ChatML template, where the
judge's options "(A)"/"(B)" take several tokens.
"""
import json

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models as tok_models, pre_tokenizers, trainers

from cai_jax import models
from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn
from cai_jax.data.tokenizer import Tokenizer, train_tokenizer
from cai_jax.models.store import save_model

WORDS = "apple river stone cloud bread lamp green quiet swift paper garden window".split()
GOOD, BAD = "thank you kindly", "go away now"


def _write_pairs(path, n, seed, *, soft_labels=True):
  """``n`` chosen/rejected rows: the chosen answer is polite, the rejected one rude.

  With ``soft_labels`` each row has a ``p_chosen`` in {1.0, 0.9, 0.8}, and a quarter of
  the rows list the rude answer first with a label below 0.5 (so the majority label is
  not always the first response); without, there is no ``p_chosen`` (hard labels).
  """
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      a, b = rng.choice(WORDS, 2, replace=False)
      prompt = f"\n\nHuman: {a}?\n\nAssistant: "
      good, bad = f"{GOOD} {b}.", f"{BAD} {b}."
      row = {}
      if soft_labels:
        p = float(rng.choice([1.0, 0.9, 0.8]))
        if i % 4 == 3:
          good, bad, p = bad, good, 1.0 - p
        row["p_chosen"] = p
      f.write(json.dumps({"chosen": prompt + good, "rejected": prompt + bad, **row}) + "\n")
  return str(path)


@pytest.fixture(scope="session")
def words():
  """The tiny world's twelve words."""
  return WORDS


@pytest.fixture(scope="session")
def good_bad():
  """(polite answer prefix, rude answer prefix)."""
  return GOOD, BAD


@pytest.fixture(scope="session")
def write_pairs():
  """``write_pairs(path, n, seed, *, soft_labels=True) -> path`` (see ``_write_pairs``)."""
  return _write_pairs


@pytest.fixture(scope="session")
def polite_rude_conversations():
  """One Human/Assistant conversation per (word, word): "w?" answered politely or rudely
  in turn (144 conversations)."""
  return [[Turn(HUMAN, f"{w}?"), Turn(ASSISTANT, f"{GOOD if k % 2 else BAD} {v}.")]
          for k, (w, v) in enumerate((w, v) for w in WORDS for v in WORDS)]


@pytest.fixture(scope="session")
def words_tokenizer(tmp_path_factory) -> Tokenizer:
  """A 300-piece tokenizer trained on the polite and rude answers to every word."""
  d = tmp_path_factory.mktemp("words_tokenizer")
  text = [f"{w}? {GOOD} {v}. {w}? {BAD} {v}." for w in WORDS for v in WORDS]
  return train_tokenizer(text * 4, model_prefix=str(d / "tok"), vocab_size=300)


@pytest.fixture(scope="session")
def lm_config() -> models.ModelConfig:
  """The tiny LM architecture (vocab 320 >= the tokenizer's 300 ids)."""
  return models.ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            d_ff=64, tie_embeddings=True, max_seq_len=512)


@pytest.fixture(scope="session")
def random_lm(tmp_path_factory, lm_config, words_tokenizer) -> str:
  """A saved LM with random weights (seed 0) recording ``words_tokenizer``; its folder.
  Shared by several modules: read it, never write into it."""
  d = tmp_path_factory.mktemp("random_lm")
  _, params = models.init(lm_config, seed=0)
  return save_model(str(d / "lm"), params, lm_config,
                    info={"tokenizer_path": words_tokenizer.path})


def _same_saved_params(ref_dir, other_dir):
  """Asserts two saved models hold bit-identical parameters; returns the first's handle."""
  import jax  # pylint: disable=import-outside-toplevel
  from cai_jax.models.store import SavedModel  # pylint: disable=import-outside-toplevel
  saved = SavedModel.open(str(ref_dir))
  _, p_ref = saved.load()
  _, p_other = SavedModel.open(str(other_dir)).load()
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               p_ref, p_other)
  return saved


@pytest.fixture(scope="session")
def same_saved_params():
  """``same_saved_params(ref_dir, other_dir) -> SavedModel``: the resume tests' check that
  a killed-and-resumed run saved exactly the uninterrupted run's parameters."""
  return _same_saved_params


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="session")
def bpe_folder(tmp_path_factory, dialogue_texts_small):
  tok = tokenizers.Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(dialogue_texts_small, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                          for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
  folder = tmp_path_factory.mktemp("bpe")
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}))
  (folder / "chat_template.jinja").write_text(CHATML)
  return str(folder)


@pytest.fixture(scope="session")
def dialogue_texts_small():
  words = "the a lamp river bread answer is which response more harmful harmless option".split()
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(words, 12)) + " (A) (B) Human: Assistant: ?" for _ in range(300)]
