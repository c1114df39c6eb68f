"""Rematerialisation (``ModelConfig.remat``) changes memory, never results."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import models
from cai_jax.models.config import REMAT, ModelConfig

BASE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
            max_seq_len=32, param_dtype="float32", dtype="float32")


def _close(grads, ref):
  """float32 recomputation may reassociate sums: equal to ~1e-6 of each leaf's scale."""
  assert jax.tree.structure(grads) == jax.tree.structure(ref)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
    scale = float(jnp.max(jnp.abs(r))) or 1.0
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-6 * scale)


def _loss_and_grads(cfg, kind, params, tokens):
  graphdef = models.abstract(cfg, kind)[0]

  def loss(p):
    out = models.merge(graphdef, p)(tokens)
    return jnp.mean(out ** 2) if kind == "scalar" else jnp.mean(
        jax.nn.log_softmax(out)[..., 0])

  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("kind", ["lm", "scalar"])
@pytest.mark.parametrize("policy", [p for p in REMAT if p != "none"])
def test_remat_same_loss_and_grads(kind, policy):
  cfg = ModelConfig(**BASE)
  _, params = models.init(cfg, kind, seed=1)
  if kind == "scalar":   # a non-zero head so the backbone gets gradients
    params["head_w_d"] = jnp.linspace(-1.0, 1.0, cfg.d_model)
  tokens = jax.random.randint(jax.random.key(2), (3, 10), 0, cfg.vocab_size)
  ref_loss, ref_grads = _loss_and_grads(cfg, kind, params, tokens)
  loss, grads = _loss_and_grads(ModelConfig(**BASE, remat=policy), kind, params, tokens)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-7)
  _close(grads, ref_grads)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 0


def test_remat_is_in_the_backward_pass():
  """The remat config's gradient jaxpr holds checkpoint (remat) equations; the default's
  does not."""
  tokens = jnp.zeros((1, 4), jnp.int32)

  def jaxpr_text(cfg):
    graphdef, params = models.init(cfg, "lm")
    f = jax.grad(lambda p: jnp.sum(models.merge(graphdef, p)(tokens)))
    return str(jax.make_jaxpr(f)(params))

  assert "remat" not in jaxpr_text(ModelConfig(**BASE)) and "checkpoint" not in jaxpr_text(
      ModelConfig(**BASE))
  text = jaxpr_text(ModelConfig(**BASE, remat="full"))
  assert "remat" in text or "checkpoint" in text


def test_remat_with_packing_and_sliding_window():
  cfg = ModelConfig(**{**BASE, "sliding_window": 3})
  _, params = models.init(cfg, "lm", seed=3)
  tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, cfg.vocab_size)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1]], jnp.int32)

  def loss_grads(c):
    graphdef = models.abstract(c)[0]
    f = lambda p: jnp.mean(models.merge(graphdef, p)(tokens, segment_ids_bt=seg) ** 2)
    return jax.jit(jax.value_and_grad(f))(params)

  (l0, g0), (l1, g1) = loss_grads(cfg), loss_grads(ModelConfig(**{**BASE, "sliding_window": 3,
                                                                    "remat": "full"}))
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  _close(g1, g0)


def test_remat_config_round_trip_and_validation():
  cfg = ModelConfig(**BASE)
  assert "remat" not in cfg.to_dict()   # saved configs stay as they were
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg
  r = ModelConfig(**BASE, remat="dots_saveable")
  assert r.to_dict()["remat"] == "dots_saveable" and ModelConfig.from_dict(r.to_dict()) == r
  with pytest.raises(ValueError, match="remat"):
    ModelConfig(**BASE, remat="sometimes")
