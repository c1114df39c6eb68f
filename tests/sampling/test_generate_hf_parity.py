"""(b) greedy generate on ``from_hf`` weights == transformers' greedy generate (tiny Llama)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cai_jax import sampling  # noqa: E402

PROMPTS = [[5, 17, 33], [2, 90, 14, 61, 7, 7, 120, 3, 44, 9, 18], [77], [12, 5, 99, 31, 64, 2]]
NEW = 16


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
  from cai_jax.models.hf import from_hf
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  hf = transformers.LlamaForCausalLM(cfg).eval()
  path = str(tmp_path_factory.mktemp("tiny_llama"))
  hf.save_pretrained(path)
  return hf, from_hf(path)


def _hf_greedy(hf, prompt, eos=None):
  with torch.no_grad():
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                          dtype=torch.long),
                      max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=0,
                      min_new_tokens=0 if eos is not None else NEW)
  return out[0, len(prompt):].tolist()


def test_b_greedy_tokens_match_transformers(hf_pair):
  hf, ours = hf_pair
  want = [_hf_greedy(hf, p) for p in PROMPTS]
  got = sampling.generate(ours, PROMPTS, max_new_tokens=NEW)
  assert got.tokens == want
  # HF's own scores agree with our log-probs.
  with torch.no_grad():
    for p, toks, lps in zip(PROMPTS, got.tokens, got.logprobs):
      logits = hf(torch.tensor([p + toks])).logits[0, len(p) - 1:-1]
      ref = torch.log_softmax(logits, -1)[torch.arange(len(toks)), torch.tensor(toks)]
      np.testing.assert_allclose(lps, ref.numpy(), atol=1e-4)


def test_b_greedy_with_stop_token_matches_transformers(hf_pair):
  hf, ours = hf_pair
  free = [_hf_greedy(hf, p) for p in PROMPTS]
  stop = free[1][4]  # a token that appears mid-sequence in one row
  want = [_hf_greedy(hf, p, eos=stop) for p in PROMPTS]
  got = sampling.generate(ours, PROMPTS, max_new_tokens=NEW, stop_tokens=[stop])
  # transformers pads finished rows only in batches; one prompt at a time it just stops.
  assert got.tokens == want
