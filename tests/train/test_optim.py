"""Optimizer builder: schedule shape, decay mask, clipping."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cai_jax.train import optim


def test_warmup_then_cosine_to_end_ratio():
  s = optim.learning_rate_schedule(learning_rate=1.0, total_steps=110, warmup_steps=10,
                                   schedule="cosine", end_ratio=0.1)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(110)) == pytest.approx(0.1)
  assert float(s(60)) == pytest.approx(0.55, abs=1e-6)


def test_unknown_schedule_raises():
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.learning_rate_schedule(learning_rate=1.0, total_steps=10, schedule="step")


def test_decay_mask_skips_norms_and_embeddings():
  params = {"embed_vd": jnp.ones((4, 2)), "layers": {0: {"w_df": jnp.ones((2, 3)),
                                                         "scale_d": jnp.ones(2)}}}
  assert optim.decay_mask(params) == {"embed_vd": False,
                                      "layers": {0: {"w_df": True, "scale_d": False}}}


def test_weight_decay_applies_only_to_masked_and_clip_bounds_update():
  params = {"embed_vd": jnp.ones((2, 2)), "w_df": jnp.ones((2, 2))}
  tx, _ = optim.make_optimizer(total_steps=10, learning_rate=0.1, weight_decay=0.5,
                               clip_norm=1.0, schedule="constant")
  zero = {k: jnp.zeros_like(v) for k, v in params.items()}
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["embed_vd"], 0.0)
  np.testing.assert_allclose(updates["w_df"], -0.1 * 0.5, rtol=1e-6)
  # clipping: a huge gradient is scaled to global norm 1 before Adam
  clip = optax.clip_by_global_norm(1.0)
  g, _ = clip.update({"a": jnp.full((4,), 100.0)}, clip.init(None))
  assert float(optax.tree.norm(g)) == pytest.approx(1.0, rel=1e-5)
