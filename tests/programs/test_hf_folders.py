"""Hugging Face folders in and out of the programs.

A tiny random Qwen2 (q/k/v biases: not a plain Llama) saved by transformers is opened as
a ``SavedModel`` and used as SFT's init model and DPO's policy; both export their trained
model with ``hf_export``, and transformers loads the exports with the logits of our own
saved models. The preference model starts from the HF folder too (its backbone).
"""
import os

import jax
import numpy as np
import pytest
import torch
import transformers as tf

from cai_jax import models
from cai_jax.data.conversations import write_conversations
from cai_jax.models import hf
from cai_jax.models.store import SavedModel
from cai_jax.programs.rl_cai.dpo import dpo
from cai_jax.programs.rl_cai.preference_model import preference_model
from cai_jax.programs.sl_cai.sft import sft

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def hf_qwen(tmp_path_factory, words_tokenizer):
  torch.manual_seed(0)
  cfg = tf.Qwen2Config(vocab_size=320, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=128, tie_word_embeddings=True,
                       initializer_range=0.1)
  path = str(tmp_path_factory.mktemp("hf_qwen"))
  tf.Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
  return path


def _hf_logits(path, tokens):
  model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens).long()).logits.numpy()


def _our_logits(saved_dir, tokens):
  graphdef, params = SavedModel.open(saved_dir).load()
  return np.asarray(models.logits(models.merge(graphdef, params), tokens))


def test_saved_model_opens_a_hf_folder(hf_qwen):
  saved = SavedModel.open(hf_qwen)
  assert saved.is_hf and saved.kind == "lm" and saved.config.family == "qwen2"
  assert saved.config == hf.read_hf_config(hf_qwen)
  _, params = saved.load()
  jax.tree.map(np.testing.assert_array_equal, params, models.split(hf.from_hf(hf_qwen))[1])
  _, scalar = saved.load(kind="scalar")
  jax.tree.map(np.testing.assert_array_equal, scalar["backbone"],
               {k: v for k, v in params.items() if k != "lm_head_dv"})
  with pytest.raises(ValueError, match="tokenizer_path"):
    saved.tokenizer()   # this folder has no tokenizer.json
  with pytest.raises(FileNotFoundError, match="neither a saved model folder"):
    SavedModel.open(os.path.dirname(hf_qwen) + "/nowhere", role="sft.init_model")


def test_sft_and_dpo_start_from_a_hf_folder_and_export_one(
    hf_qwen, tmp_path, polite_rude_conversations, words_tokenizer, write_pairs):
  data = str(tmp_path / "convs.jsonl")
  write_conversations(data, polite_rude_conversations)
  out = sft(str(tmp_path / "sft"), train_data=data, init_model=hf_qwen,
            tokenizer_path=words_tokenizer.path, seq_len=32, batch_size=8, num_steps=3,
            mesh_shape=(1, 1, 1), hf_export=True)
  saved = SavedModel.open(out)
  assert saved.info["init_from"] == SavedModel.open(hf_qwen).path
  assert saved.config.family == "qwen2"
  export = str(tmp_path / "sft" / "hf")
  assert os.path.isfile(os.path.join(export, "tokenizer.model"))
  tokens = np.random.default_rng(0).integers(0, 300, (2, 17)).astype(np.int32)
  ours, theirs = _our_logits(out, tokens), _hf_logits(export, tokens)
  assert np.max(np.abs(ours - theirs)) <= 1e-4 * max(1.0, np.max(np.abs(theirs)))
  assert np.max(np.abs(ours - _hf_logits(hf_qwen, tokens))) > 1e-3   # it did train

  pairs = write_pairs(tmp_path / "pairs.jsonl", 32, seed=1)
  out = dpo(str(tmp_path / "dpo"), train_data=pairs, policy_model=hf_qwen,
            tokenizer_path=words_tokenizer.path, seq_len=32, batch_size=8, num_steps=2,
            mesh_shape=(1, 1, 1), hf_export=True)
  ours, theirs = _our_logits(out, tokens), _hf_logits(str(tmp_path / "dpo" / "hf"), tokens)
  assert np.max(np.abs(ours - theirs)) <= 1e-4 * max(1.0, np.max(np.abs(theirs)))


def test_preference_model_from_a_hf_folder(hf_qwen, tmp_path, words_tokenizer, write_pairs):
  pairs = write_pairs(tmp_path / "pairs.jsonl", 32, seed=2)
  out = preference_model(str(tmp_path / "pm"), train_data=pairs, init_model=hf_qwen,
                         tokenizer_path=words_tokenizer.path, seq_len=32, batch_size=8,
                         num_steps=2, mesh_shape=(1, 1, 1))
  saved = SavedModel.open(out)
  assert saved.kind == "scalar" and saved.config.qkv_bias
  _, params = saved.load()
  assert np.any(np.asarray(params["head_w_d"]) != 0)   # the head trained
