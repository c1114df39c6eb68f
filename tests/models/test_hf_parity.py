"""HF parity: tiny random transformers Llamas, saved and loaded with from_hf / to_hf.

Every model is built inside the test (no hub). Weights are re-randomised (norm scales
too) so that a swapped or mis-transposed tensor cannot hide behind ones or tiny logits.
"""
import copy
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from cai_jax import models
from cai_jax.models import hf
from cai_jax.sharding import make_mesh

torch.set_num_threads(2)
transformers.utils.logging.disable_progress_bar()
TOL = 1e-4
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-6, tie_word_embeddings=False)
ODD = dict(BASE, vocab_size=301, hidden_size=48, intermediate_size=100, num_attention_heads=6,
           num_key_value_heads=1, head_dim=12, rms_norm_eps=1e-3, rope_theta=500000.0)
CASES = {
    "mha_untied": dict(BASE, num_key_value_heads=4),
    "gqa_tied": dict(BASE, tie_word_embeddings=True, rope_theta=1234.5, rms_norm_eps=1e-5),
    "odd_mqa_headdim12": ODD,
    "odd_gqa_3layers_tied": dict(ODD, num_key_value_heads=2, num_hidden_layers=3,
                                 tie_word_embeddings=True),
}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:
        p.copy_(1.0 + 0.2 * noise)
      elif "embed_tokens" in name:
        p.copy_(noise)
      else:
        p.copy_(noise * p.shape[1] ** -0.5)
  return model.eval()


def _hf_model(kw: dict, seed: int = 0, cls=LlamaForCausalLM, cfg_cls=LlamaConfig):
  return _randomize(cls(cfg_cls(**kw)), seed)


def _tokens(vocab: int, b: int = 3, t: int = 13, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (b, t), dtype=np.int32)


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens).long()).logits.float().numpy()


def _max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _save(model, path, **kw) -> str:
  model.save_pretrained(str(path), **kw)
  return str(path)


def _edit_config(path: str, fn) -> None:
  file = os.path.join(path, "config.json")
  with open(file) as f:
    cfg = json.load(f)
  fn(cfg)
  with open(file, "w") as f:
    json.dump(cfg, f)


@pytest.mark.parametrize("name", list(CASES))
def test_from_hf_logits_match_transformers(name, tmp_path):
  ref = _hf_model(CASES[name], seed=len(name))
  model = hf.from_hf(_save(ref, tmp_path))
  tokens = _tokens(CASES[name]["vocab_size"])
  err = _max_err(models.logits(model, tokens), _hf_logits(ref, tokens))
  print(f"\n[hf parity] {name}: max abs err {err:.2e}")
  assert model.cfg.head_dim == ref.config.head_dim
  assert model.cfg.tie_embeddings == CASES[name]["tie_word_embeddings"]
  assert err <= TOL


@pytest.mark.parametrize("index", [True, False], ids=["with_index", "glob_no_index"])
def test_sharded_checkpoint(index, tmp_path):
  ref = _hf_model(CASES["odd_mqa_headdim12"], seed=3)
  path = _save(ref, tmp_path, max_shard_size="40KB")
  files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
  assert len(files) > 3
  if not index:
    os.remove(os.path.join(path, hf._INDEX))
  tokens = _tokens(ref.config.vocab_size)
  err = _max_err(models.logits(hf.from_hf(path), tokens), _hf_logits(ref, tokens))
  print(f"\n[hf parity] sharded {len(files)} files, index={index}: max abs err {err:.2e}")
  assert err <= TOL


def test_old_style_config_top_level_rope_theta(tmp_path):
  ref = _hf_model(dict(BASE, num_key_value_heads=4, rope_theta=77777.0, rms_norm_eps=1e-4))
  path = _save(ref, tmp_path)

  def old_style(cfg):
    assert cfg.pop("rope_parameters")["rope_theta"] == 77777.0
    cfg["rope_theta"], cfg["rope_scaling"] = 77777.0, None
    cfg["torch_dtype"] = cfg.pop("dtype")
    del cfg["head_dim"], cfg["num_key_value_heads"]  # defaults: hidden/heads, heads
  _edit_config(path, old_style)
  model = hf.from_hf(path)
  assert (model.cfg.rope_theta, model.cfg.norm_eps) == (77777.0, 1e-4)
  tokens = _tokens(BASE["vocab_size"])
  err = _max_err(models.logits(model, tokens), _hf_logits(ref, tokens))
  print(f"\n[hf parity] old-style config (top-level rope_theta): max abs err {err:.2e}")
  assert err <= TOL


def test_mistral_without_sliding_window(tmp_path):
  ref = _hf_model(dict(BASE, sliding_window=None), 5, MistralForCausalLM, MistralConfig)
  tokens = _tokens(BASE["vocab_size"])
  err = _max_err(models.logits(hf.from_hf(_save(ref, tmp_path)), tokens),
                 _hf_logits(ref, tokens))
  print(f"\n[hf parity] mistral (no sliding window): max abs err {err:.2e}")
  assert err <= TOL


def test_bf16_checkpoint(tmp_path):
  ref32 = _hf_model(CASES["gqa_tied"], seed=7)
  with torch.no_grad():  # bf16-exact weights, kept in float32 (and float32 rope buffers)
    for p in ref32.parameters():
      p.copy_(p.to(torch.bfloat16).float())
  path = _save(copy.deepcopy(ref32).to(torch.bfloat16), tmp_path)
  header = hf._read_header(os.path.join(path, "model.safetensors"))
  assert {v["dtype"] for v in header.values()} == {"BF16"}
  tokens = _tokens(BASE["vocab_size"])
  want = _hf_logits(ref32, tokens)
  m32 = hf.from_hf(path, jnp.float32)
  err32 = _max_err(models.logits(m32, tokens), want)
  m16 = hf.from_hf(path, jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(models.split(m16)[1]))
  err16 = _max_err(models.logits(m16, tokens), want)
  scale = float(np.max(np.abs(want)))
  print(f"\n[hf parity] bf16 checkpoint: as float32 max abs err {err32:.2e}; bf16 compute "
        f"{err16:.2e} (logit scale {scale:.1f})")
  assert err32 <= TOL
  assert err16 <= 0.05 * scale


def _random_ours(cfg: models.ModelConfig, seed: int = 0) -> models.Transformer:
  graphdef, shapes, _ = models.abstract(cfg)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    noise = rng.standard_normal(x.shape, np.float32)
    if x.ndim == 1:
      return jnp.asarray(1.0 + 0.2 * noise)
    if "embed_vd" in jax.tree_util.keystr(path):
      return jnp.asarray(noise)
    return jnp.asarray(noise * x.shape[0] ** -0.5)
  return models.merge(graphdef, jax.tree.map_with_path(fill, shapes))


ROUND_TRIP = {
    "gqa_untied": models.ModelConfig(vocab_size=301, d_model=48, n_layers=2, n_heads=6,
                                     n_kv_heads=2, head_dim=12, d_ff=100, rope_theta=3000.0,
                                     norm_eps=1e-5, max_seq_len=64),
    "mha_tied": models.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4,
                                   d_ff=64, tie_embeddings=True),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_to_hf_round_trip(name, tmp_path):
  ours = _random_ours(ROUND_TRIP[name], seed=1)
  path = str(tmp_path / "hf")
  hf.to_hf(ours, path, max_shard_bytes=30_000 if name == "gqa_untied" else 2**30,
           extra_config={"bos_token_id": 1, "eos_token_id": 2})
  n_files = len([f for f in os.listdir(path) if f.endswith(".safetensors")])
  assert (n_files > 1) == (name == "gqa_untied") == os.path.exists(f"{path}/{hf._INDEX}")
  loaded, info = LlamaForCausalLM.from_pretrained(path, output_loading_info=True)
  assert not any(info.values()), info
  tokens = _tokens(ours.cfg.vocab_size, b=2, t=11, seed=4)
  err = _max_err(_hf_logits(loaded.eval(), tokens), models.logits(ours, tokens))
  back = hf.from_hf(path)
  assert back.cfg == ours.cfg
  jax.tree.map(np.testing.assert_array_equal, models.split(back)[1], models.split(ours)[1])
  print(f"\n[hf parity] to_hf round trip {name}: transformers max abs err {err:.2e}; "
        "from_hf(to_hf) params exact")
  assert err <= TOL


def test_to_hf_bf16(tmp_path):
  ours = _random_ours(ROUND_TRIP["gqa_untied"], seed=2)
  hf.to_hf(ours, str(tmp_path), dtype=jnp.bfloat16)
  loaded, info = LlamaForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not any(info.values()) and loaded.dtype == torch.bfloat16
  back = hf.from_hf(str(tmp_path), jnp.float32)
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32),
                         models.split(ours)[1])
  jax.tree.map(np.testing.assert_array_equal, models.split(back)[1], rounded)
  tokens = _tokens(ours.cfg.vocab_size)
  err = _max_err(_hf_logits(loaded.float().eval(), tokens), models.logits(back, tokens))
  print(f"\n[hf parity] to_hf bf16 -> transformers (as float32): max abs err {err:.2e}")
  assert err <= TOL


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
  return _save(_hf_model(BASE, seed=11), tmp_path_factory.mktemp("base"))


def _copy(src: str, dst) -> str:
  return shutil.copytree(src, str(dst / "ckpt"))


@pytest.mark.parametrize("change,match", [
    ("drop", "missing keys.*model.layers.1.mlp.up_proj.weight"),
    ("add", "unexpected keys.*model.layers.0.self_attn.q_proj.bias"),
    ("shape", "shape mismatches.*mlp.gate_proj.weight"),
])
def test_checkpoint_key_errors(base_ckpt, tmp_path, change, match):
  path = _copy(base_ckpt, tmp_path)
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  if change == "drop":
    del tensors["model.layers.1.mlp.up_proj.weight"]
  elif change == "add":
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
  else:
    _edit_config(path, lambda c: c.update(intermediate_size=160))
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)  # ignored
  save_file(tensors, file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=match):
    hf.from_hf(path)


@pytest.mark.parametrize("edit,match", [
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_scaling.*'yarn'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "gpt2"}, "model_type"),
    ({"model_type": "mistral", "layer_types": ["full_attention"] * 2}, "layer_types"),
])
def test_unsupported_config_errors(base_ckpt, tmp_path, edit, match):
  path = _copy(base_ckpt, tmp_path)
  _edit_config(path, lambda c: c.update(edit))
  with pytest.raises(ValueError, match=match):
    hf.from_hf(path)


def test_from_hf_on_mesh(base_ckpt, n_devices):
  mesh = make_mesh(2, 2, 2)
  model = hf.from_hf(base_ckpt, mesh=mesh)
  want = models.param_shardings(model.cfg, mesh)
  params = models.split(model)[1]
  got = jax.tree.map(lambda x: x.sharding, params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w, x in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(params)):
    assert g.is_equivalent_to(w, x.ndim) and g.spec == w.spec
  assert params["layers"][0]["attn"]["wq_dnk"].sharding.spec == P("fsdp", "tensor", None)
  single = models.split(hf.from_hf(base_ckpt))[1]
  jax.tree.map(np.testing.assert_array_equal, params, single)
  ref = _hf_model(BASE, seed=11)
  tokens = _tokens(BASE["vocab_size"], b=4)
  err = _max_err(jax.block_until_ready(models.logits(model, tokens)), _hf_logits(ref, tokens))
  print(f"\n[hf parity] from_hf on a 2x2x2 mesh: max abs err {err:.2e}")
  assert err <= TOL
