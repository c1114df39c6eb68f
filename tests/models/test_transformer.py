"""Model-level properties: causality, packing, caching, heads, dtypes, config checks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import models
from cai_jax.models.transformer import causal_mask

CFG = models.ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_ff=48)


@pytest.fixture(scope="module")
def lm():
  return models.build(CFG, seed=1)


def _tokens(b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


def test_logits_shape_dtype(lm):
  out = models.logits(lm, _tokens(3, 11))
  assert out.shape == (3, 11, CFG.vocab_size) and out.dtype == jnp.float32


def test_causal_future_tokens_do_not_matter(lm):
  a = _tokens(2, 12, 0)
  b = a.at[:, 7:].set(_tokens(2, 5, 9))
  la, lb = models.logits(lm, a), models.logits(lm, b)
  np.testing.assert_allclose(la[:, :7], lb[:, :7], atol=1e-6)
  assert not np.allclose(la[:, 7:], lb[:, 7:])


def test_packed_segments_equal_separate_forwards(lm):
  s1, s2 = _tokens(1, 5, 1), _tokens(1, 7, 2)
  packed = jnp.concatenate([s1, s2, jnp.zeros((1, 3), jnp.int32)], axis=1)
  seg = jnp.array([[1] * 5 + [2] * 7 + [0] * 3])
  out = lm(packed, segment_ids_bt=seg)
  np.testing.assert_allclose(out[:, :5], lm(s1), atol=1e-5)
  np.testing.assert_allclose(out[:, 5:12], lm(s2), atol=1e-5)
  assert np.all(np.isfinite(np.asarray(out)))


def test_cached_incremental_forward_matches_full(lm):
  toks = _tokens(2, 9, 3)
  full = lm(toks)
  s = 16
  cache = [{"k": jnp.zeros((2, CFG.n_kv_heads, s, CFG.head_dim)),       # [b, m, S, k]
            "v": jnp.zeros((2, CFG.n_kv_heads, s, CFG.head_dim))} for _ in range(CFG.n_layers)]
  # prefill 5 tokens, then decode one at a time
  steps = [(0, 5)] + [(i, i + 1) for i in range(5, 9)]
  for lo, hi in steps:
    pos = jnp.broadcast_to(jnp.arange(lo, hi)[None], (2, hi - lo))
    mask = (jnp.arange(s)[None, None, :] <= pos[:, :, None])
    h, cache = lm.hidden(toks[:, lo:hi], positions_bt=pos, mask_bts=mask, cache=cache,
                         cache_index=lo)
    np.testing.assert_allclose(lm.logits(h), full[:, lo:hi], atol=1e-4)


def test_scalar_head_model_and_last_token_values():
  m = models.build(CFG, "scalar", seed=0)
  toks = _tokens(2, 6)
  vals = m(toks)
  assert vals.shape == (2, 6)
  mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  last = models.last_token_values(vals, mask)
  np.testing.assert_allclose(last, [vals[0, 2], vals[1, 5]])


def test_bfloat16_close_to_float32():
  cfg16 = models.ModelConfig(**{**CFG.to_dict(), "param_dtype": "bfloat16", "dtype": "bfloat16"})
  g32, p32 = models.split(models.build(CFG, seed=4))
  g16, _ = models.split(models.build(cfg16, seed=4))
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32)
  toks = _tokens(2, 8)
  l32 = models.merge(g32, p32)(toks)
  l16 = models.merge(g16, p16)(toks)
  assert l16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(l32 - l16))) < 0.05


def test_causal_mask_padding_keys_masked():
  seg = jnp.array([[1, 1, 0]])
  m = causal_mask(seg, 1, 3)
  assert not bool(m[0, 1, 2]) and bool(m[0, 1, 0]) and not bool(m[0, 2, 2])


@pytest.mark.parametrize("kw", [dict(n_heads=4, n_kv_heads=3), dict(d_model=30, n_heads=4),
                                dict(dtype="float64"), dict(vocab_size=0)])
def test_config_validation(kw):
  with pytest.raises(ValueError):
    models.ModelConfig(**{**dict(vocab_size=10, d_model=32, n_layers=1, n_heads=4), **kw})


def test_num_params_matches_tree():
  for tied in (False, True):
    cfg = models.ModelConfig(**{**CFG.to_dict(), "tie_embeddings": tied})
    _, shapes, _ = models.abstract(cfg)
    assert models.count_params(shapes) == cfg.num_params()


@pytest.mark.parametrize("b,n,k,d", [(3, 4, 8, 32), (16, 9, 64, 576), (1, 8, 128, 2048)])
def test_decode_projection_is_the_einsum_bit_for_bit(b, n, k, d):
  """``_project_step`` (the decode step's output projection, its weight permutation
  hoisted out of the loop) sums what ``einsum("btnk,nkd->btd")`` sums, in the same order."""
  from cai_jax.models import layers
  rng = np.random.default_rng(b + n)
  out = jnp.asarray(rng.normal(size=(b, 1, n, k)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(n, k, d)), jnp.float32)
  want = np.asarray(jax.jit(lambda o, w: jnp.einsum("btnk,nkd->btd", o, w))(out, w))
  w_cd = np.asarray(w).transpose(1, 0, 2).reshape(k * n, d)          # numpy: (k, n) rows
  got = jax.jit(layers._project_step)(out, jnp.asarray(w_cd))
  np.testing.assert_array_equal(np.asarray(got), want)
  inside = jax.jit(lambda o, w: layers._project_step(o, layers._step_weight(w)))(out, w)
  np.testing.assert_array_equal(np.asarray(inside), want)


def test_prepared_model_decodes_the_same_step(lm):
  """A decode step of a model with ``prepare_decode``'s permuted weights returns the
  unprepared model's hidden states and cache, bit for bit."""
  from flax import nnx
  from cai_jax.models.layers import prepare_decode
  cache = [{"k": jnp.zeros((2, 2, 16, 8)), "v": jnp.zeros((2, 2, 16, 8))} for _ in range(2)]
  prompt = _tokens(2, 6, 4)
  _, cache = lm.hidden(prompt, cache=cache, cache_index=jnp.int32(0),
                       mask_bts=jnp.arange(16)[None, None, :] <= jnp.arange(6)[None, :, None])
  gd, params = nnx.split(lm)

  @functools.partial(jax.jit, static_argnums=2)
  def step(params, cache, prepared):
    m = nnx.merge(gd, params)
    if prepared:
      m = prepare_decode(m)
      assert all(a.wo_step.shape == (32, 32) for a in (l.attn for l in m.layers))
    mask = (jnp.arange(16) <= 6)[None, None, :].repeat(2, 0)
    return m.hidden(_tokens(2, 1, 5), positions_bt=jnp.full((2, 1), 6), mask_bts=mask,
                    cache=cache, cache_index=jnp.int32(6))

  a, b = step(params, cache, True), step(params, cache, False)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
