"""Tests for the Bradley-Terry preference loss and its metrics."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.losses.preference import (expected_calibration_error, preference_loss,
                                       preference_metrics)


def _np_loss(rewards, target):
  m = rewards[:, 0] - rewards[:, 1]
  ls = lambda z: -np.logaddexp(0.0, -z)  # log sigmoid
  return float(np.mean(-(target * ls(m) + (1 - target) * ls(-m))))


def _loss_at_margin(margin, target):
  return preference_loss(jnp.array([[margin, 0.0]]), jnp.array([target]))


def test_seed_margin_1p5_gives_bt_probability_0p818():
  # Seed 003, Math entry 1: margin 1.5 -> Bradley-Terry P ~ 81.8%.
  loss = preference_loss(jnp.array([[2.0, 0.5]]), jnp.array([1.0]))
  assert math.exp(-float(loss)) == pytest.approx(0.818, abs=5e-4)
  assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))), rel=1e-6)


def test_seed_soft_label_optimum_is_sigmoid_margin_equal_target():
  # Seed 003, Math entries 1-2: with a soft (clamped) label t = 0.6 the loss pulls
  # sigmoid(margin) toward 0.6, not 1: its minimum is at margin = logit(0.6).
  t = 0.6
  m_star = math.log(t / (1 - t))
  grad = jax.grad(_loss_at_margin)(m_star, t)
  assert abs(float(grad)) < 1e-6
  assert float(_loss_at_margin(m_star, t)) < float(_loss_at_margin(m_star + 0.1, t))
  assert float(_loss_at_margin(m_star, t)) < float(_loss_at_margin(m_star - 0.1, t))
  assert float(jax.grad(_loss_at_margin)(1.5, t)) > 0  # at margin 1.5 it pushes back down


def test_matches_numpy_formula():
  rng = np.random.default_rng(0)
  r = rng.normal(size=(16, 2)).astype(np.float32) * 3
  t = rng.uniform(size=(16,)).astype(np.float32)
  assert float(preference_loss(r, t)) == pytest.approx(_np_loss(r, t), rel=1e-5)


def test_loss_falls_as_margin_grows():
  margins = jnp.linspace(-10.0, 10.0, 41)
  losses = jax.vmap(lambda m: _loss_at_margin(m, 1.0))(margins)
  assert np.all(np.diff(np.asarray(losses)) < 0)


def test_swap_pair_and_flip_target_is_symmetric():
  rng = np.random.default_rng(1)
  r = rng.normal(size=(32, 2)).astype(np.float32)
  t = rng.uniform(size=(32,)).astype(np.float32)
  a = preference_loss(r, t)
  b = preference_loss(r[:, ::-1], 1.0 - t)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_target_half_is_minimised_at_equal_rewards():
  margins = jnp.linspace(-3.0, 3.0, 61)
  losses = np.asarray(jax.vmap(lambda m: _loss_at_margin(m, 0.5))(margins))
  assert np.argmin(losses) == 30  # margin 0
  assert losses[30] == pytest.approx(math.log(2.0), rel=1e-6)
  # Seed 003 Math entry 2 edge case: the gradient is zero at equal rewards.
  g = jax.grad(preference_loss)(jnp.array([[0.7, 0.7]]), jnp.array([0.5]))
  np.testing.assert_allclose(g, 0.0, atol=1e-7)


def test_finite_loss_and_gradients_at_extreme_rewards():
  r = jnp.array([[100.0, -100.0], [-100.0, 100.0], [100.0, -100.0], [1e4, -1e4]])
  for t in (jnp.array([1.0, 1.0, 0.6, 0.0]), jnp.array([0.0, 0.5, 0.4, 1.0])):
    loss, g = jax.value_and_grad(preference_loss)(r, t)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(np.asarray(g)))
  # A confidently wrong pair costs ~ its margin (200 nats), not inf.
  wrong = preference_loss(jnp.array([[-100.0, 100.0]]), jnp.array([1.0]))
  assert float(wrong) == pytest.approx(200.0, rel=1e-5)


def test_jit_and_pair_axis_validation():
  r, t = jnp.ones((4, 2)), jnp.ones((4,))
  assert jax.jit(preference_loss)(r, t) == pytest.approx(math.log(2.0), rel=1e-6)
  with pytest.raises(ValueError, match="pair axis"):
    preference_loss(jnp.ones((4, 3)), t)


def test_metrics_hand_built():
  rewards = jnp.array([[2.0, 1.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])
  target = jnp.array([1.0, 1.0, 0.5, 0.2])
  m = jax.jit(preference_metrics)(rewards, target)
  # Decided pairs 0, 1, 3; oriented margins +1, -1, -3; only pair 0 is right.
  assert float(m["preference/decided"]) == 3
  assert float(m["preference/accuracy"]) == pytest.approx(1 / 3)
  assert float(m["preference/margin"]) == pytest.approx(-1.0)
  p = 1 / (1 + np.exp(-np.array([1.0, -1.0, 0.0, 3.0])))
  # 10 bins: p = .731 (bin 7), .269 (bin 2), .5 (bin 5), .953 (bin 9): one each.
  ece = np.mean(np.abs(p - np.array([1.0, 1.0, 0.5, 0.2])))
  assert float(m["preference/ece"]) == pytest.approx(ece, rel=1e-5)


def test_metrics_all_ties_give_zero_accuracy_not_nan():
  m = preference_metrics(jnp.array([[1.0, 0.0]]), jnp.array([0.5]))
  assert float(m["preference/accuracy"]) == 0.0
  assert float(m["preference/decided"]) == 0.0


def test_ece_matches_bruteforce_and_is_zero_when_calibrated():
  rng = np.random.default_rng(2)
  p = rng.uniform(size=200).astype(np.float32)
  t = rng.uniform(size=200).astype(np.float32)
  nb = 7
  idx = np.minimum((p * nb).astype(int), nb - 1)
  want = sum(np.sum(idx == b) / len(p) * abs(p[idx == b].mean() - t[idx == b].mean())
             for b in range(nb) if np.any(idx == b))
  got = expected_calibration_error(p, t, num_bins=nb)
  assert float(got) == pytest.approx(want, rel=1e-4)
  assert float(expected_calibration_error(p, p, num_bins=nb)) == pytest.approx(0.0, abs=1e-6)
