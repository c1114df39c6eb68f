"""The sampler's KV cache respects sliding windows.

A Gemma-2-style model (alternating local / global layers, window 4) and a Mistral-style
one (every layer local, window 3) decode far past their windows; every step's cached
logits equal the full forward of the row's real tokens (which applies the window by
position), through ragged prompts, stops, a continuation after holes, and n samples per
prefill. A control model without a window differs, so the window is really in play. The
greedy tokens also equal transformers' own greedy generate of the same Gemma 2 weights.
"""
import numpy as np
import pytest
import torch
import transformers as tf
from conftest import full_logits, random_prompts

from cai_jax import models, sampling
from cai_jax.models import hf

GEMMA2 = models.ModelConfig(
    vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
    init_std=0.3, family="gemma2", norm_offset=1.0, activation="gelu_tanh", post_norms=True,
    embed_scale=True, attn_softcap=20.0, final_softcap=15.0, query_pre_attn_scalar=8.0,
    sliding_window=4, layer_types=("sliding_attention", "full_attention"))
MISTRAL = models.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             d_ff=64, init_std=0.3, family="mistral", sliding_window=3)
PROMPTS = random_prompts([3, 11, 1, 7, 9, 5])


def _check(model, history, out, atol=2e-4):
  step_logits = np.asarray(out.step_logits)
  fulls = full_logits(model, [h + t for h, t in zip(history, out.tokens)])
  for r, full in enumerate(fulls):
    start = len(history[r]) - 1
    for i in range(len(out.tokens[r])):
      np.testing.assert_allclose(step_logits[r, i], full[start + i], atol=atol,
                                 err_msg=f"row {r} step {i}")


@pytest.mark.parametrize("cfg", [GEMMA2, MISTRAL], ids=["gemma2_alternating", "mistral"])
def test_cached_decode_and_continuation_follow_the_window(cfg):
  model = models.build(cfg, seed=3)
  s = sampling.Sampler.from_model(model)
  out1 = s.generate(PROMPTS, max_new_tokens=10, stop_tokens=[5, 17], keep_state=True,
                    temperature=1.0, seed=4, collect_logits=True)
  _check(model, PROMPTS, out1)
  extra = random_prompts([2, 9, 1, 4, 3, 12], seed=5)
  out2 = s.continue_generation(out1.conversation, extra, max_new_tokens=9,
                               collect_logits=True)
  _check(model, [p + t + e for p, t, e in zip(PROMPTS, out1.tokens, extra)], out2)


def test_forked_samples_follow_the_window():
  model = models.build(GEMMA2, seed=5)
  out = sampling.Sampler.from_model(model).generate(
      PROMPTS[:3], max_new_tokens=12, num_samples=2, temperature=1.0, seed=2,
      collect_logits=True)
  _check(model, [PROMPTS[r // 2] for r in range(6)], out)


def test_window_changes_the_result():
  """Control: the same weights without the window give other logits past the window."""
  model = models.build(MISTRAL, seed=3)
  params = models.split(model)[1]
  full_cfg = models.ModelConfig(**{**MISTRAL.to_dict(), "sliding_window": None})
  unwindowed = models.merge(models.abstract(full_cfg)[0], params)
  seq = random_prompts([12], seed=9)
  a, b = full_logits(model, seq)[0], full_logits(unwindowed, seq)[0]
  np.testing.assert_allclose(a[:3], b[:3], atol=1e-5)   # within the window: identical
  assert np.max(np.abs(a[3:] - b[3:])) > 1e-2


def test_greedy_matches_transformers_gemma2(tmp_path):
  torch.manual_seed(0)
  cfg = tf.Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                        initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
  ref = tf.Gemma2ForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.copy_(0.3 * torch.randn(p.shape))
  ref.save_pretrained(str(tmp_path))
  ours = hf.from_hf(str(tmp_path))
  got = sampling.generate(ours, PROMPTS[:4], max_new_tokens=14)
  for prompt, toks in zip(PROMPTS[:4], got.tokens):
    with torch.no_grad():
      want = ref.generate(torch.tensor([prompt]), max_new_tokens=14, min_new_tokens=14,
                          do_sample=False, attention_mask=torch.ones(1, len(prompt),
                                                                     dtype=torch.long))
    assert toks == want[0, len(prompt):].tolist()
