"""Tests for per-token KL estimators, KL-penalised rewards and KL controllers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.losses.kl import (AdaptiveKLController, FixedKLController, KLControllerState,
                               kl_k1, kl_k3, kl_penalized_rewards, last_valid_index)


def test_estimators_zero_when_policy_equals_reference():
  lp = jnp.array([-0.1, -3.0, -20.0])
  np.testing.assert_array_equal(kl_k1(lp, lp), 0.0)
  np.testing.assert_array_equal(kl_k3(lp, lp), 0.0)


def test_k3_is_nonnegative_everywhere_and_k1_is_not():
  rng = np.random.default_rng(0)
  lp = rng.uniform(-50.0, 0.0, size=1000).astype(np.float32)
  ref = rng.uniform(-50.0, 0.0, size=1000).astype(np.float32)
  assert np.all(np.asarray(kl_k3(lp, ref)) >= 0.0)
  assert np.any(np.asarray(kl_k1(lp, ref)) < 0.0)
  # k3 is accurate near r = 0 (expm1), where exp(r) - 1 - r ~ r^2 / 2.
  assert float(kl_k3(jnp.float32(-1.0), jnp.float32(-1.0 + 1e-3))) == pytest.approx(5e-7, rel=1e-2)


def test_estimators_unbiased_for_kl_of_categoricals():
  # Sample tokens from pi; E[k1] = E[k3] = KL(pi || ref) exactly.
  key = jax.random.key(0)
  logits_pi = jnp.array([2.0, 0.5, 0.0, -1.0, 1.0])
  logits_ref = jnp.array([0.0, 1.0, 0.5, 0.0, -0.5])
  lp_all = jax.nn.log_softmax(logits_pi)
  ref_all = jax.nn.log_softmax(logits_ref)
  exact = float(jnp.sum(jnp.exp(lp_all) * (lp_all - ref_all)))
  n = 200_000
  tokens = jax.random.categorical(key, logits_pi, shape=(n,))
  lp, ref = lp_all[tokens], ref_all[tokens]
  for est in (kl_k1, kl_k3):
    samples = np.asarray(est(lp, ref), np.float64)
    stderr = samples.std() / np.sqrt(n)
    assert abs(samples.mean() - exact) < 5 * stderr + 1e-4, (est.__name__, exact)
  # Schulman's point: k3 has lower variance than k1 for nearby distributions.
  assert np.asarray(kl_k3(lp, ref)).var() < np.asarray(kl_k1(lp, ref)).var()


def test_estimator_gradients_finite_at_extremes():
  lp = jnp.array([0.0, -50.0, -1e-6, -80.0])
  ref = jnp.array([-50.0, 0.0, -80.0, -1e-6])
  for est in (kl_k1, kl_k3):
    g = jax.grad(lambda x: jnp.sum(est(x, ref)))(lp)
    assert np.all(np.isfinite(np.asarray(g)))


def test_last_valid_index():
  mask = jnp.array([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
  np.testing.assert_array_equal(last_valid_index(mask), [1, 3, -1, 2])


def test_kl_penalized_rewards_hand_built():
  score = jnp.array([2.0, -1.0, 7.0])
  logp = jnp.array([[-1.0, -2.0, -0.5, -9.0], [-9.0, -1.0, -1.0, -2.0], [-1.0] * 4])
  ref = jnp.array([[-1.5, -1.0, -0.5, 0.0], [0.0, -2.0, -1.0, -1.0], [-2.0] * 4])
  mask = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]], jnp.float32)  # right/left/empty
  r = jax.jit(lambda *a: kl_penalized_rewards(*a, beta=0.1))(score, logp, ref, mask)
  want = np.array([[-0.05, 0.1, 2.0, 0.0], [0.0, -0.1, 0.0, -1.0 + 0.1], [0.0] * 4])
  np.testing.assert_allclose(r, want, atol=1e-6)
  r3 = kl_penalized_rewards(score, logp, ref, mask, beta=0.1, estimator="k3")
  k3 = np.expm1(np.asarray(ref - logp)) - np.asarray(ref - logp)
  want3 = np.where(np.asarray(mask) > 0, -0.1 * k3, 0.0)
  want3[0, 2] += 2.0
  want3[1, 3] -= 1.0
  np.testing.assert_allclose(r3, want3, rtol=1e-5, atol=1e-6)


def test_seed_ppo_kl_worked_example_structure():
  # Seed 003, Math entry 3: a 50-token response, per-token KL k, total KL 50 k,
  # per-example objective r - beta * KL; a Goodharted response with total KL 80
  # scores worse. The seed's r, k and beta values were lost in extraction (its
  # math was stripped), so r = 2, k = 0.02, beta = 0.1 and r_hack = 4 are ours.
  t, k, beta = 50, 0.02, 0.1
  ref = jnp.full((1, t), -1.0)
  mask = jnp.ones((1, t))
  r = kl_penalized_rewards(jnp.array([2.0]), ref + k, ref, mask, beta=beta)
  assert float(jnp.sum(r)) == pytest.approx(2.0 - beta * t * k, rel=1e-5)  # 1.9
  hacked = kl_penalized_rewards(jnp.array([4.0]), ref + 80.0 / t, ref, mask, beta=beta)
  assert float(jnp.sum(hacked)) == pytest.approx(4.0 - 8.0, rel=1e-5)
  assert float(jnp.sum(hacked)) < float(jnp.sum(r))


def test_unknown_estimator_raises():
  with pytest.raises(ValueError, match="unknown KL estimator"):
    kl_penalized_rewards(jnp.zeros(1), jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2)),
                         beta=0.1, estimator="k2")


def test_fixed_controller_never_moves():
  c = FixedKLController(beta=0.05)
  s = c.init()
  s2 = jax.jit(c.update)(s, 100.0, 512)
  assert float(s2.beta) == pytest.approx(0.05)


def test_adaptive_controller_moves_beta_the_right_way():
  c = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
  s = c.init()
  update = jax.jit(c.update)
  assert float(update(s, 9.0, 256).beta) > 0.1  # KL too high -> penalise more
  assert float(update(s, 3.0, 256).beta) < 0.1  # KL too low -> penalise less
  assert float(update(s, 6.0, 256).beta) == pytest.approx(0.1)
  # Ziegler et al. rule with the error clipped to +-0.2:
  assert float(update(s, 9.0, 256).beta) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
  assert float(update(s, 6.6, 256).beta) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10_000))
  assert float(update(s, 1e9, 10_000).beta) == pytest.approx(0.12)
  assert float(update(s, 0.0, 10_000).beta) == pytest.approx(0.08)


def test_controller_state_is_a_pytree_and_controller_is_static():
  c = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=100)
  s = c.init()
  assert isinstance(s, KLControllerState)
  leaves, treedef = jax.tree_util.tree_flatten(s)
  assert len(leaves) == 1 and jax.tree_util.tree_unflatten(treedef, leaves) == s
  step = jax.jit(lambda ctl, st, kl: ctl.update(st, kl, 10), static_argnums=0)
  for _ in range(3):
    s = step(c, s, 12.0)
  assert float(s.beta) == pytest.approx(0.1 * 1.02 ** 3, rel=1e-6)
  assert hash(c) == hash(AdaptiveKLController(0.1, 6.0, 100))
  with pytest.raises(ValueError):
    AdaptiveKLController(init_beta=0.1, target=0.0, horizon=100)
