"""HF parity for every supported family: tiny random transformers models, built in the test.

For each family and several shapes: ``from_hf`` logits equal transformers' (float32, max
|difference| within 1e-4 of the logit scale, sequences longer than the sliding windows);
``to_hf`` of a random model of ours loads in transformers' own class with the same logits
and ``from_hf(to_hf(m))`` gives back the same parameters. The rows are printed as a table
at the end of the test session (``tests/models/conftest.py``).
"""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers as tf

from cai_jax import models
from cai_jax.models import hf, hf_config

torch.set_num_threads(2)
tf.utils.logging.disable_progress_bar()
REL_TOL = 1e-4
SMALL = dict(vocab_size=211, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=256, rms_norm_eps=1e-5)
ODD = dict(SMALL, vocab_size=157, hidden_size=36, intermediate_size=72, num_hidden_layers=4,
           num_attention_heads=6, num_key_value_heads=1, head_dim=12, rms_norm_eps=1e-6)
_L3 = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
           high_freq_factor=4.0, original_max_position_embeddings=64)
_G3_ROPE = {"full_attention": dict(rope_type="linear", factor=8.0, rope_theta=1e6),
            "sliding_attention": dict(rope_type="default", rope_theta=1e4)}

# name -> (config class, model class, config kwargs)
CASES = {
    "llama3.1_rope": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(SMALL, rope_parameters=_L3)),
    "llama3.2_rope_tied_mqa": (tf.LlamaConfig, tf.LlamaForCausalLM,
                               dict(ODD, rope_parameters=dict(_L3, factor=32.0),
                                    tie_word_embeddings=True)),
    "llama_linear_rope": (tf.LlamaConfig, tf.LlamaForCausalLM,
                          dict(SMALL, rope_parameters=dict(rope_type="linear", factor=4.0,
                                                           rope_theta=10000.0))),
    "mistral_window5": (tf.MistralConfig, tf.MistralForCausalLM, dict(SMALL, sliding_window=5)),
    "mistral_window9_odd": (tf.MistralConfig, tf.MistralForCausalLM,
                            dict(ODD, sliding_window=9)),
    "qwen2_bias": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(SMALL, rope_theta=1e6)),
    "qwen2_bias_tied_odd": (tf.Qwen2Config, tf.Qwen2ForCausalLM,
                            dict(ODD, tie_word_embeddings=True)),
    "qwen2_sliding_top_layers": (tf.Qwen2Config, tf.Qwen2ForCausalLM,
                                 dict(SMALL, use_sliding_window=True, sliding_window=6,
                                      max_window_layers=1)),
    "qwen3_qk_norm": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(SMALL)),
    "qwen3_qk_norm_odd_tied": (tf.Qwen3Config, tf.Qwen3ForCausalLM,
                               dict(ODD, tie_word_embeddings=True)),
    "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(SMALL)),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM,
               dict(SMALL, sliding_window=6, query_pre_attn_scalar=24)),
    "gemma2_low_caps_odd": (tf.Gemma2Config, tf.Gemma2ForCausalLM,
                            dict(ODD, sliding_window=4, query_pre_attn_scalar=12,
                                 attn_logit_softcapping=3.0, final_logit_softcapping=2.0)),
    "gemma3_text": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM,
                    dict(SMALL, sliding_window=6, query_pre_attn_scalar=16,
                         rope_parameters=_G3_ROPE,
                         layer_types=["sliding_attention", "sliding_attention",
                                      "full_attention"])),
    "gemma3_text_pattern_odd": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM,
                                dict(ODD, sliding_window=5, query_pre_attn_scalar=12,
                                     sliding_window_pattern=2, attn_logit_softcapping=4.0,
                                     final_logit_softcapping=3.0)),
    "phi3_fused_window": (tf.Phi3Config, tf.Phi3ForCausalLM,
                          dict(SMALL, sliding_window=7, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2)),
    "phi3_partial_rotary": (tf.Phi3Config, tf.Phi3ForCausalLM,
                            dict(ODD, partial_rotary_factor=0.5, pad_token_id=0,
                                 bos_token_id=1, eos_token_id=2)),
}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Every weight random (norm scales and biases too), so no swap can hide."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:
        p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.5 * noise)
      elif "embed_tokens" in name:
        p.copy_(noise)
      else:
        p.copy_(noise * p.shape[1] ** -0.5)
  return model.eval()


def _tokens(vocab: int, b: int = 2, t: int = 40, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (b, t), dtype=np.int32)


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens).long()).logits.float().numpy()


def _check(ours, theirs, name, record, what) -> None:
  ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
  err = float(np.max(np.abs(ours - theirs)))
  scale = float(np.max(np.abs(theirs)))
  record(what, name, err, scale)
  assert err <= REL_TOL * max(scale, 1.0), f"{name}: max err {err:.2e} at logit scale {scale}"


@pytest.mark.parametrize("name", list(CASES))
def test_from_hf_matches_transformers(name, tmp_path, parity_record):
  cfg_cls, model_cls, kw = CASES[name]
  ref = _randomize(model_cls(cfg_cls(**kw)), seed=len(name))
  ref.save_pretrained(str(tmp_path))
  model = hf.from_hf(str(tmp_path))
  assert model.cfg.family == ref.config.model_type
  window = kw.get("sliding_window")
  if window is not None and (name.startswith(("mistral", "gemma", "phi3")) or
                             kw.get("use_sliding_window")):
    assert model.cfg.has_sliding_layers and model.cfg.sliding_window == window
  tokens = _tokens(kw["vocab_size"], seed=len(name))
  _check(models.logits(model, tokens), _hf_logits(ref, tokens), name, parity_record, "from_hf")


def _random_ours(cfg: models.ModelConfig, seed: int) -> models.Transformer:
  graphdef, shapes, _ = models.abstract(cfg)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    noise = rng.standard_normal(x.shape, np.float32)
    key = jax.tree_util.keystr(path)
    if "norm" in key:
      return 1.0 + 0.2 * noise
    if "embed_vd" in key or x.ndim < 3 and key.split("'")[-2].startswith("b"):
      return noise if "embed_vd" in key else 0.5 * noise
    return noise * x.shape[0] ** -0.5
  return models.merge(graphdef, jax.tree.map_with_path(fill, shapes))


@pytest.mark.parametrize("name", list(CASES))
def test_to_hf_round_trip(name, tmp_path, parity_record):
  cfg_cls, model_cls, kw = CASES[name]
  cfg = hf_config.config_from_hf(cfg_cls(**kw).to_dict())
  ours = _random_ours(cfg, seed=len(name) + 1)
  hf.to_hf(ours, str(tmp_path), max_shard_bytes=60_000)
  loaded, info = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                         output_loading_info=True)
  assert type(loaded) is model_cls
  assert not any(info.values()), info
  tokens = _tokens(cfg.vocab_size, seed=3)
  _check(models.logits(ours, tokens), _hf_logits(loaded.eval(), tokens), name, parity_record,
         "to_hf")
  back = hf.from_hf(str(tmp_path))
  assert back.cfg == ours.cfg
  jax.tree.map(np.testing.assert_array_equal, models.split(back)[1], models.split(ours)[1])


def _saved(tmp_path, name="llama3.1_rope") -> str:
  cfg_cls, model_cls, kw = CASES[name]
  model_cls(cfg_cls(**kw)).save_pretrained(str(tmp_path))
  return str(tmp_path)


def _edit(path: str, fn) -> None:
  file = os.path.join(path, "config.json")
  with open(file) as f:
    cfg = json.load(f)
  fn(cfg)
  with open(file, "w") as f:
    json.dump(cfg, f)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["rope_parameters"].update(rope_type="dynamic", factor=2.0), "dynamic"),
    (lambda c: c["rope_parameters"].update(rope_type="yarn", factor=2.0), "'yarn'"),
    (lambda c: c.update(attention_bias=True), "attention_bias"),
    (lambda c: c.update(mlp_bias=True), "mlp_bias"),
    (lambda c: c.update(hidden_act="relu"), "hidden_act"),
    (lambda c: c.update(model_type="gpt2"), "model_type='gpt2'"),
    (lambda c: c.update(model_type="gemma3"), "multimodal"),
    (lambda c: c["rope_parameters"].update(partial_rotary_factor=0.5), "partial_rotary"),
    (lambda c: c.pop("hidden_size"), "missing field 'hidden_size'"),
])
def test_unsupported_llama_configs_are_refused(tmp_path, edit, match):
  path = _saved(tmp_path)
  _edit(path, edit)
  with pytest.raises(ValueError, match=match):
    hf.from_hf(path)


def test_unsupported_family_variants_are_refused(tmp_path):
  path = _saved(tmp_path / "g3", "gemma3_text")
  _edit(path, lambda c: c.update(use_bidirectional_attention=True))
  with pytest.raises(ValueError, match="use_bidirectional_attention"):
    hf.from_hf(path)
  path = _saved(tmp_path / "m", "mistral_window5")
  _edit(path, lambda c: c.update(layer_types=["full_attention"] * 3))
  with pytest.raises(ValueError, match="layer_types is not supported for mistral"):
    hf.from_hf(path)
  path = _saved(tmp_path / "g2", "gemma2")
  _edit(path, lambda c: c.update(attention_bias=True))
  with pytest.raises(ValueError, match="attention_bias"):
    hf.from_hf(path)


def test_forced_llama_type_on_a_llama3_config_is_not_silently_wrong(tmp_path):
  """The reported failure: a Llama 3.1 config loads with its rope scaling, not without."""
  path = _saved(tmp_path)
  cfg = hf.read_hf_config(path)
  assert (cfg.rope_type, cfg.rope_factor, cfg.rope_original_max_len) == ("llama3", 8.0, 64)


def test_missing_fields_take_the_family_defaults():
  base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4)
  g2 = hf_config.config_from_hf(dict(base, model_type="gemma2"))
  assert (g2.attn_softcap, g2.final_softcap, g2.sliding_window) == (50.0, 30.0, 4096)
  assert g2.layer_types == ("sliding_attention", "full_attention") and g2.head_dim == 256
  mistral = hf_config.config_from_hf(dict(base, model_type="mistral"))
  assert mistral.sliding_window == 4096 and mistral.has_sliding_layers
  no_window = hf_config.config_from_hf(dict(base, model_type="mistral", sliding_window=None))
  assert not no_window.has_sliding_layers
  g3 = hf_config.config_from_hf(dict(base, model_type="gemma3_text", rope_theta=1e6,
                                     rope_local_base_freq=1e4, num_hidden_layers=7))
  assert (g3.rope_theta, g3.local_rope_theta) == (1e6, 1e4)
  assert [g3.layer_type(i) == "full_attention" for i in range(7)] == [
      False] * 5 + [True, False]


def test_to_hf_refuses_a_config_its_family_cannot_hold():
  cfg = models.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, qkv_bias=True)
  with pytest.raises(ValueError, match="cannot be written as a LlamaForCausalLM.*qkv_bias"):
    hf_config.config_to_hf(cfg, "float32")
