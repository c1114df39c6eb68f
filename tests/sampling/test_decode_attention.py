"""The decode step's attention forms ("reduce" and "dot", ``layers.decode_attention``).

Reference: attention of one query over the cache written out in NumPy (float64), by
hand; and the two forms must sample the same greedy tokens through the sampler.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from conftest import CFG, random_prompts

from cai_jax import models, sampling
from cai_jax.models import layers
from cai_jax.models.config import ModelConfig


def _numpy_attention(q, k, v, mask, scale, cap):
  """q [b, n, kd]; k, v [b, s, m, kd]; mask [b, s] -> [b, n, kd] (float64)."""
  b, n, kd = q.shape
  m = k.shape[2]
  out = np.zeros((b, n, kd))
  for r in range(b):
    for h in range(n):
      kv = h // (n // m)
      s = (k[r, :, kv] @ q[r, h]) * scale
      if cap is not None:
        s = np.tanh(s / cap) * cap
      s = np.where(mask[r], s, -np.inf)
      p = np.exp(s - s.max())
      out[r, h] = (p / p.sum()) @ v[r, :, kv]
  return out


@pytest.mark.parametrize("form", ["reduce", "dot"])
@pytest.mark.parametrize("cap", [None, 7.0])
def test_decode_forms_match_numpy(form, cap):
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                    d_ff=48, max_seq_len=64, attn_softcap=cap)
  attn = layers.Attention(cfg, nnx.Rngs(0))
  rng = np.random.default_rng(1)
  b, s = 3, 20
  q = rng.normal(size=(b, 1, 4, 8)).astype(np.float32)
  k = rng.normal(size=(b, s, 2, 8)).astype(np.float32)
  v = rng.normal(size=(b, s, 2, 8)).astype(np.float32)
  lens = np.array([1, 7, 20])
  mask = np.arange(s)[None] < lens[:, None]
  impl = attn._attend_one if form == "reduce" else functools.partial(attn._attend,
                                                                       heads_first=True)
  heads_first = lambda x: jnp.asarray(x.transpose(0, 2, 1, 3))        # the cache's layout
  got = np.asarray(impl(jnp.asarray(q), heads_first(k), heads_first(v),
                        jnp.asarray(mask[:, None, :])))[:, 0]
  want = _numpy_attention(q[:, 0].astype(np.float64), k.astype(np.float64),
                          v.astype(np.float64), mask, 8 ** -0.5, cap)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_auto_is_reduce_on_cpu_and_bad_choice_fails(monkeypatch):
  monkeypatch.delenv("CAI_JAX_DECODE_ATTENTION", raising=False)
  assert layers.decode_attention() == ("reduce" if jax.default_backend() == "cpu" else "dot")
  monkeypatch.setenv("CAI_JAX_DECODE_ATTENTION", "flash")
  with pytest.raises(ValueError, match="CAI_JAX_DECODE_ATTENTION"):
    layers.decode_attention()


@pytest.fixture
def fresh_traces():
  """Programs traced under a forced form must not outlive the test (the choice is read
  at trace time): clear jit caches before and after."""
  jax.clear_caches()
  yield
  jax.clear_caches()


def test_forms_sample_the_same_tokens(monkeypatch, fresh_traces):
  model = models.build(CFG, seed=3)
  prompts = random_prompts([5, 17, 30, 9, 2, 41], seed=5)
  out = {}
  for form in ("reduce", "dot"):
    monkeypatch.setenv("CAI_JAX_DECODE_ATTENTION", form)
    jax.clear_caches()   # the choice is read at trace time
    out[form] = sampling.Sampler.from_model(model).generate(prompts, max_new_tokens=40,
                                                           cache_len=512)
  for a, b in zip(out["reduce"].tokens, out["dot"].tokens):
    assert list(a) == list(b)
  np.testing.assert_allclose(np.concatenate([np.asarray(x) for x in out["reduce"].logprobs]),
                             np.concatenate([np.asarray(x) for x in out["dot"].logprobs]),
                             atol=1e-4)
