"""Shared tiny models for the sampler tests (GQA, vocab divisible by tensor=2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import models

CFG = models.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_ff=64, init_std=0.1)


@pytest.fixture(scope="session")
def lm():
  return models.build(CFG, seed=7)


def full_logits(model, seqs, length=64):
  """Full-forward logits of ragged token lists -> list of [t_i, v] numpy arrays.

  Rows are right-padded to one fixed length (causal: padding after a token does not
  change its logits), so every call reuses one compiled forward.
  """
  length = max(length, max(len(s) for s in seqs))
  tokens = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)] = s
  logits = np.asarray(models.logits(model, jnp.asarray(tokens)))
  return [logits[i, :len(s)] for i, s in enumerate(seqs)]


def full_logprobs(model, seqs, length=64):
  """log-softmax of ``full_logits`` -> list of [t_i, v] numpy arrays."""
  return [np.asarray(jax.nn.log_softmax(x, axis=-1)) for x in full_logits(model, seqs, length)]


def random_prompts(lengths, seed=0, vocab=CFG.vocab_size):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, size=n).tolist() for n in lengths]
