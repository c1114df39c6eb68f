"""Tests for GAE, whitening and the PPO clipped policy and value losses."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.losses.ppo import gae, masked_mean, policy_loss, value_loss, whiten


def _gae_bruteforce(rewards, values, mask, gamma, lam, bootstrap=None):
  """Textbook GAE on each row's valid tokens only (padding removed)."""
  b, t = rewards.shape
  adv = np.zeros((b, t))
  for i in range(b):
    idx = [j for j in range(t) if mask[i, j] > 0]
    last_adv = 0.0
    next_v = 0.0 if bootstrap is None else float(bootstrap[i])
    for j in reversed(idx):
      delta = rewards[i, j] + gamma * next_v - values[i, j]
      last_adv = delta + gamma * lam * last_adv
      adv[i, j] = last_adv
      next_v = values[i, j]
  returns = np.where(mask > 0, adv + values, 0.0)
  return adv, returns


def _random_masked(seed, b=6, t=9):
  rng = np.random.default_rng(seed)
  r = rng.normal(size=(b, t)).astype(np.float32)
  v = rng.normal(size=(b, t)).astype(np.float32)
  mask = (rng.uniform(size=(b, t)) < 0.7).astype(np.float32)  # holes anywhere
  mask[0] = 0.0  # empty row
  mask[1] = [1] * 5 + [0] * (t - 5)  # right padding
  mask[2] = [0] * 3 + [1] * (t - 3)  # left padding
  mask[3] = 1.0
  return r, v, mask


@pytest.mark.parametrize("seed,gamma,lam", [(0, 1.0, 0.95), (1, 0.99, 0.9), (2, 0.9, 0.0),
                                            (3, 1.0, 1.0)])
def test_gae_matches_bruteforce_on_random_masked_inputs(seed, gamma, lam):
  r, v, mask = _random_masked(seed)
  want_adv, want_ret = _gae_bruteforce(r, v, mask, gamma, lam)
  adv, ret = jax.jit(lambda *a: gae(*a, gamma=gamma, lam=lam))(r, v, mask)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_gae_with_bootstrap_value():
  r, v, mask = _random_masked(4)
  boot = np.linspace(-1.0, 1.0, r.shape[0]).astype(np.float32)
  want_adv, _ = _gae_bruteforce(r, v, mask, 0.97, 0.9, bootstrap=boot)
  adv, _ = gae(r, v, mask, gamma=0.97, lam=0.9, bootstrap=boot)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)


def test_gae_hand_worked_monte_carlo_case():
  # gamma = lam = 1: advantage = reward-to-go - V_t; return = reward-to-go.
  r = jnp.array([[0.0, -0.1, 1.0, 0.0]])
  v = jnp.array([[0.5, 0.2, 0.9, 123.0]])  # the padded value must never be read
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)
  np.testing.assert_allclose(ret, [[0.9, 0.9, 1.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(adv, [[0.4, 0.7, 0.1, 0.0]], atol=1e-6)


def test_gae_ignores_garbage_in_padding():
  r, v, mask = _random_masked(5)
  a1, r1 = gae(r, v, mask, gamma=0.99, lam=0.95)
  r2 = np.where(mask > 0, r, 1e6).astype(np.float32)
  v2 = np.where(mask > 0, v, -1e6).astype(np.float32)
  a2, rt2 = gae(r2, v2, mask, gamma=0.99, lam=0.95)
  np.testing.assert_allclose(a1, a2, rtol=1e-6)
  np.testing.assert_allclose(r1, rt2, rtol=1e-6)


def test_whiten_gives_mean0_std1_over_masked_entries():
  rng = np.random.default_rng(6)
  x = rng.normal(3.0, 5.0, size=(4, 10)).astype(np.float32)
  mask = (rng.uniform(size=(4, 10)) < 0.6).astype(np.float32)
  x_garbage = np.where(mask > 0, x, np.nan).astype(np.float32)
  w = np.asarray(jax.jit(whiten)(x_garbage, mask))
  sel = w[mask > 0]
  assert sel.mean() == pytest.approx(0.0, abs=1e-5)
  assert sel.std() == pytest.approx(1.0, abs=1e-4)
  assert np.all(w[mask == 0] == 0.0)
  w2 = np.asarray(whiten(x, mask, shift_mean=False))[mask > 0]
  assert w2.mean() == pytest.approx(x[mask > 0].mean(), rel=1e-4)
  assert w2.std() == pytest.approx(1.0, abs=1e-4)


def test_masked_mean_empty_mask_is_zero():
  assert float(masked_mean(jnp.ones((2, 3)), jnp.zeros((2, 3)))) == 0.0


def test_policy_loss_hand_built_clip_and_clipfrac():
  ratios = np.array([[1.5, 1.5, 0.5, 0.5, 1.1, 100.0]], np.float32)
  adv = np.array([[1.0, -1.0, 1.0, -1.0, 2.0, 5.0]], np.float32)
  mask = np.array([[1, 1, 1, 1, 1, 0]], np.float32)
  logp_old = np.full_like(ratios, -2.0)
  logp_new = logp_old + np.log(ratios)
  (loss, m), grad = jax.value_and_grad(
      lambda lp: policy_loss(lp, logp_old, adv, mask, clip_eps=0.2), has_aux=True)(logp_new)
  # Per-token max(-A r, -A clip(r)): -1.2 (clipped), 1.5, -0.5, 0.8 (clipped), -2.2.
  assert float(loss) == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8 - 2.2) / 5, rel=1e-5)
  assert float(m["policy/clipfrac"]) == pytest.approx(0.4)
  r = ratios[0, :5].astype(np.float64)
  assert float(m["policy/approx_kl"]) == pytest.approx(np.mean(r - 1 - np.log(r)), rel=1e-4)
  assert float(m["policy/ratio"]) == pytest.approx(r.mean(), rel=1e-5)
  g = np.asarray(grad)[0]
  # Clipped-active tokens and padding get no gradient; the others get -A r / N.
  np.testing.assert_allclose(g[[0, 3, 5]], 0.0, atol=1e-7)
  np.testing.assert_allclose(g[[1, 2, 4]], -adv[0, [1, 2, 4]] * r[[1, 2, 4]] / 5, rtol=1e-5)


def test_policy_loss_on_policy_identity():
  rng = np.random.default_rng(7)
  lp = rng.normal(-3.0, 1.0, size=(3, 5)).astype(np.float32)
  adv = rng.normal(size=(3, 5)).astype(np.float32)
  mask = np.ones((3, 5), np.float32)
  loss, m = policy_loss(lp, lp, adv, mask, clip_eps=0.2)
  assert float(loss) == pytest.approx(-adv.mean(), rel=1e-5)
  assert float(m["policy/clipfrac"]) == 0.0
  assert float(m["policy/approx_kl"]) == pytest.approx(0.0, abs=1e-7)


def test_policy_objective_is_bounded_by_clip():
  # For positive advantages the surrogate objective -loss_t never exceeds
  # (1 + eps) A_t, however large the ratio; for negative ones never (1 - eps) A_t.
  rng = np.random.default_rng(8)
  log_ratio = rng.uniform(-15.0, 15.0, size=(4, 16)).astype(np.float32)
  adv = rng.normal(size=(4, 16)).astype(np.float32)
  eps = 0.2
  one = jnp.ones((1, 1))
  per_token = jax.vmap(lambda lr, a: policy_loss(lr[None, None], 0 * one, a[None, None], one,
                                                 clip_eps=eps)[0])
  objective = -np.asarray(per_token(log_ratio.ravel(), adv.ravel()))
  a = adv.ravel()
  bound = np.where(a > 0, (1 + eps) * a, (1 - eps) * a)
  assert np.all(objective <= bound + 1e-5)
  assert np.any(np.isclose(objective, bound))  # the bound is attained (clip active)


def test_policy_loss_finite_gradients_at_extremes():
  lp_new = jnp.array([[0.0, -200.0, -1e4, 0.0]])
  lp_old = jnp.array([[-200.0, 0.0, 0.0, -1e4]])
  mask = jnp.ones((1, 4))
  for sign in (1.0, -1.0):
    adv = sign * jnp.array([[100.0, 100.0, -100.0, -100.0]])
    (loss, m), g = jax.value_and_grad(
        lambda lp: policy_loss(lp, lp_old, adv, mask, clip_eps=0.2), has_aux=True)(lp_new)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
    assert all(np.isfinite(float(v)) for v in m.values())


def test_value_loss_hand_built():
  v_new = jnp.array([[0.5, 0.1, -0.5, 1.0, 50.0]])
  v_old = jnp.zeros((1, 5))
  ret = jnp.array([[1.0, 1.0, 1.0, 1.0, 1.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
  (loss, m), g = jax.value_and_grad(
      lambda v: value_loss(v, v_old, ret, mask, clip_eps=0.2), has_aux=True)(v_new)
  # (unclipped, clipped) errors: (.25, .64) (.81, .81) (2.25, 1.44) (0, .64).
  assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81 + 2.25 + 0.64) / 4, rel=1e-5)
  assert float(m["value/clipfrac"]) == pytest.approx(0.5)
  assert float(m["value/error"]) == pytest.approx((0.25 + 0.81 + 2.25 + 0.0) / 4, rel=1e-5)
  g = np.asarray(g)[0]
  # Where the clipped error wins with a saturated clip, no gradient flows.
  np.testing.assert_allclose(g[[0, 3, 4]], 0.0, atol=1e-7)
  np.testing.assert_allclose(g[[1, 2]], [0.5 * 2 * (0.1 - 1.0) / 4, 0.5 * 2 * (-1.5) / 4],
                             rtol=1e-5)


def test_value_loss_unclipped_when_inside_clip_range():
  rng = np.random.default_rng(9)
  v_old = rng.normal(size=(2, 6)).astype(np.float32)
  v_new = v_old + rng.uniform(-0.1, 0.1, size=(2, 6)).astype(np.float32)
  ret = rng.normal(size=(2, 6)).astype(np.float32)
  loss, m = jax.jit(lambda *a: value_loss(*a, clip_eps=0.2))(v_new, v_old, ret, np.ones((2, 6)))
  assert float(loss) == pytest.approx(0.5 * np.mean((v_new - ret) ** 2), rel=1e-5)
  assert float(m["value/clipfrac"]) == 0.0
  assert math.isfinite(float(m["value/error"]))
