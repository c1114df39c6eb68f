"""Tests for the DPO loss (hard and soft / conservative labels) and its metrics."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.losses.dpo import dpo_loss, dpo_metrics, implicit_rewards
from cai_jax.losses.preference import preference_loss


def _log_sigmoid(z):
  return -math.log1p(math.exp(-z))


def _random_pairs(seed, b=16):
  rng = np.random.default_rng(seed)
  pi = rng.normal(-20.0, 5.0, size=(b, 2)).astype(np.float32)
  ref = rng.normal(-20.0, 5.0, size=(b, 2)).astype(np.float32)
  t = rng.uniform(size=(b,)).astype(np.float32)
  return pi, ref, t


def test_hand_worked_value():
  # h = beta * ((pi0 - ref0) - (pi1 - ref1)) = 0.1 * (0.5 + 0.5) = 0.1.
  loss = dpo_loss(jnp.array([[-1.0, -2.0]]), jnp.array([[-1.5, -1.5]]), beta=0.1)
  assert float(loss) == pytest.approx(-_log_sigmoid(0.1), rel=1e-6)
  assert float(loss) == pytest.approx(0.644397, rel=1e-5)


def test_policy_equal_to_reference_gives_log2_for_any_target():
  pi, _, t = _random_pairs(0)
  for target in (None, t):
    assert float(dpo_loss(pi, pi, beta=0.3, target=target)) == pytest.approx(math.log(2), rel=1e-6)


def test_loss_falls_when_policy_prefers_chosen_more_than_reference():
  ref = jnp.array([[-10.0, -10.0]])
  deltas = jnp.linspace(-5.0, 5.0, 21)  # policy's extra log-prob on the chosen one
  losses = jax.vmap(lambda d: dpo_loss(ref + jnp.array([[d, 0.0]]), ref, beta=0.5))(deltas)
  assert np.all(np.diff(np.asarray(losses)) < 0)
  g = jax.grad(lambda p: dpo_loss(p, ref, beta=0.5))(ref)
  assert float(g[0, 0]) < 0 < float(g[0, 1])  # descent raises chosen, lowers rejected


def test_none_target_means_one():
  pi, ref, _ = _random_pairs(1)
  np.testing.assert_allclose(dpo_loss(pi, ref, beta=0.1),
                             dpo_loss(pi, ref, beta=0.1, target=jnp.ones(16)), rtol=1e-6)


def test_conservative_dpo_equals_label_smoothing_formula():
  pi, ref, _ = _random_pairs(2, b=1)
  eps, beta = 0.1, 0.2
  h = beta * ((pi[0, 0] - ref[0, 0]) - (pi[0, 1] - ref[0, 1]))
  want = -(1 - eps) * _log_sigmoid(float(h)) - eps * _log_sigmoid(-float(h))
  got = dpo_loss(pi, ref, beta=beta, target=jnp.array([1 - eps]))
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_swap_symmetry_and_target_half():
  pi, ref, t = _random_pairs(3)
  a = dpo_loss(pi, ref, beta=0.1, target=t)
  b = dpo_loss(pi[:, ::-1], ref[:, ::-1], beta=0.1, target=1 - t)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  half = jnp.full((16,), 0.5)
  np.testing.assert_allclose(dpo_loss(pi, ref, beta=0.1, target=half),
                             dpo_loss(pi[:, ::-1], ref[:, ::-1], beta=0.1, target=half),
                             rtol=1e-6)


def test_equals_preference_loss_on_implicit_rewards():
  pi, ref, t = _random_pairs(4)
  r = implicit_rewards(pi, ref, beta=0.25)
  np.testing.assert_allclose(dpo_loss(pi, ref, beta=0.25, target=t), preference_loss(r, t),
                             rtol=1e-6)


def test_finite_gradients_at_extreme_inputs():
  pi = jnp.array([[-1.0, -300.0], [-300.0, -1.0], [0.0, -1e4]])
  ref = jnp.array([[-300.0, -1.0], [-1.0, -300.0], [-1e4, 0.0]])
  for t in (None, jnp.array([0.6, 0.4, 0.5])):
    loss, g = jax.value_and_grad(lambda p: dpo_loss(p, ref, beta=1.0, target=t))(pi)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))


def test_jit_with_traced_beta():
  pi, ref, t = _random_pairs(5)
  f = jax.jit(lambda b: dpo_loss(pi, ref, beta=b, target=t))
  np.testing.assert_allclose(f(0.3), dpo_loss(pi, ref, beta=0.3, target=t), rtol=1e-6)


def test_metrics_hand_built():
  pi = jnp.array([[-1.0, -3.0], [-2.0, -1.0], [-1.0, -1.0]])
  ref = jnp.array([[-2.0, -2.0], [-2.0, -2.0], [-2.0, -2.0]])
  # implicit rewards (beta=0.5): [0.5, -0.5], [0, 0.5], [0.5, 0.5]
  target = jnp.array([1.0, 0.3, 0.5])  # pair 1: second is chosen; pair 2: tie
  m = jax.jit(lambda p, r, t: dpo_metrics(p, r, beta=0.5, target=t))(pi, ref, target)
  assert set(m) == {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"}
  assert float(m["rewards/chosen"]) == pytest.approx((0.5 + 0.5 + 0.5) / 3)
  assert float(m["rewards/rejected"]) == pytest.approx((-0.5 + 0.0 + 0.5) / 3)
  assert float(m["rewards/margin"]) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
  assert float(m["rewards/accuracy"]) == pytest.approx(1.0)  # tie excluded
  m_none = dpo_metrics(pi[:1], ref[:1], beta=0.5)
  assert float(m_none["rewards/accuracy"]) == 1.0


def test_pair_axis_validation():
  with pytest.raises(ValueError, match="pair axis"):
    dpo_loss(jnp.ones((4,)), jnp.ones((4,)), beta=0.1)
