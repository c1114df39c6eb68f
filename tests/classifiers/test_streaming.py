"""Streaming classifier scores equal the full forward of every prefix."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import models
from cai_jax.classifiers import StreamingClassifier

CFG = models.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_ff=64, init_std=0.2)


@pytest.fixture(scope="module")
def clf():
  graphdef, params = models.init(CFG, "scalar", seed=3)
  rng = np.random.default_rng(0)   # a non-zero head, so scores vary with the tokens
  params["head_w_d"] = jnp.asarray(rng.normal(size=(CFG.d_model,)), jnp.float32)
  params["head_b"] = jnp.asarray(0.1, jnp.float32)
  return graphdef, params


def full_probs(clf, seqs, length=48):
  """sigmoid of a plain ``ScalarHeadModel`` forward, right-padded -> per row [t_i]."""
  graphdef, params = clf
  tokens = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)] = s
  values = models.merge(graphdef, params)(jnp.asarray(tokens))
  probs = np.asarray(jax.nn.sigmoid(values))
  return [probs[i, :len(s)] for i, s in enumerate(seqs)]


def _rows(lengths, seed):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, CFG.vocab_size, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("chunk", [1, 3])
def test_exchange_stream_equals_full_forward(clf, chunk):
  """Prompt prefilled once, then the response fed ``chunk`` tokens at a time (ragged)."""
  prompts = _rows([5, 11, 2], seed=1)
  responses = _rows([9, 4, 12], seed=2)
  s = StreamingClassifier(*clf)
  stream, pre = s.start(prompts, room=4)   # small room: the cache grows on the way
  got = [list(p) for p in pre]
  for start in range(0, 12, chunk):
    stream, new = s.feed(stream, [r[start:start + chunk] for r in responses])
    for g, n in zip(got, new):
      g.extend(n.tolist())
  want = full_probs(clf, [p + r for p, r in zip(prompts, responses)])
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=2e-5)


def test_output_only_stream_equals_full_forward(clf):
  responses = _rows([7, 1, 10], seed=3)
  s = StreamingClassifier(*clf)
  stream, _ = s.start(None, rows=3, room=16)
  got = [[] for _ in responses]
  for t in range(10):
    stream, new = s.feed(stream, [r[t:t + 1] for r in responses])
    for g, n in zip(got, new):
      g.extend(n.tolist())
  for g, w in zip(got, full_probs(clf, responses)):
    np.testing.assert_allclose(g, w, atol=2e-5)


def test_prefix_scores_read_the_last_token(clf):
  prompts = _rows([3, 8], seed=4)
  s = StreamingClassifier(*clf)
  want = [w[-1] for w in full_probs(clf, prompts)]
  np.testing.assert_allclose(s.prefix_scores(prompts), want, atol=2e-5)
