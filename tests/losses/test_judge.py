"""Tests for AI-feedback label construction (cai_jax.judge)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import judge


def test_seed_0p953_clamped_to_0p6():
  # Seed 003, Math entry 4 / Algorithm 2: a CoT judge 95.3% confident in (A);
  # clip(p, 0.4, 0.6) -> 0.6. (The seed's two logits were lost in extraction;
  # a gap of 3 nats gives sigmoid(3) = 0.9526.)
  logp = jax.nn.log_softmax(jnp.array([1.0, -2.0]))
  raw = judge.preference_probability(logp[0], logp[1])
  assert float(raw) == pytest.approx(0.953, abs=5e-4)
  clamped = judge.preference_probability(logp[0], logp[1], clamp=(0.4, 0.6))
  assert float(clamped) == pytest.approx(0.6)
  low = judge.preference_probability(logp[1], logp[0], clamp=(0.4, 0.6))
  assert float(low) == pytest.approx(0.4)


def test_matches_two_way_softmax_and_is_stable():
  rng = np.random.default_rng(0)
  a = rng.normal(-3.0, 2.0, size=50)
  b = rng.normal(-3.0, 2.0, size=50)
  want = np.exp(a) / (np.exp(a) + np.exp(b))
  np.testing.assert_allclose(judge.preference_probability(a, b), want, rtol=1e-5)
  # Huge magnitudes (naive exp under/overflows) and huge gaps stay finite.
  p = judge.preference_probability(jnp.array([-1000.0, 0.0, 500.0]),
                                   jnp.array([-1001.0, -200.0, 499.0]))
  np.testing.assert_allclose(p, [1 / (1 + math.exp(-1)), 1.0, 1 / (1 + math.exp(-1))],
                             rtol=1e-6)
  assert float(judge.preference_probability(-2.0, -2.0, clamp=(0.4, 0.6))) == 0.5


def test_clamp_keeps_probability_in_band_and_is_identity_inside():
  rng = np.random.default_rng(1)
  a = rng.normal(0.0, 5.0, size=500).astype(np.float32)
  b = rng.normal(0.0, 5.0, size=500).astype(np.float32)
  raw = np.asarray(judge.preference_probability(a, b))
  for lo, hi in ((0.4, 0.6), (0.0, 1.0), (0.3, 0.3)):
    p = np.asarray(judge.preference_probability(a, b, clamp=(lo, hi)))
    assert np.all((p >= lo) & (p <= hi))
    inside = (raw >= lo) & (raw <= hi)
    np.testing.assert_array_equal(p[inside], raw[inside])


@pytest.mark.parametrize("bad", [(0.6, 0.4), (-0.1, 0.5), (0.5, 1.1), (0.4,), (0.1, 0.2, 0.3),
                                 ("a", 0.5), 0.5])
def test_invalid_clamp_raises(bad):
  with pytest.raises(ValueError, match="clamp"):
    judge.preference_probability(0.0, 0.0, clamp=bad)


def test_jit_and_finite_gradients_at_extremes():
  f = jax.jit(lambda a, b: judge.preference_probability(a, b, clamp=(0.4, 0.6)))
  assert float(f(3.0, 0.0)) == pytest.approx(0.6)
  g = jax.grad(lambda a: jnp.sum(judge.preference_probability(a, -a)))(
      jnp.array([-100.0, 0.0, 100.0]))
  assert np.all(np.isfinite(np.asarray(g)))


def test_order_averaging():
  # Consistent judge: swapped P(A) = 1 - p, so the average is p itself.
  p = jnp.array([0.9, 0.3, 0.5])
  np.testing.assert_allclose(judge.order_averaged_probability(p, 1 - p), p, rtol=1e-6)
  # Pure position bias (always 70% for whatever is shown as A) averages to 0.5.
  np.testing.assert_allclose(judge.order_averaged_probability(0.7, 0.7), 0.5, rtol=1e-6)
  # Hand value: 0.5 * (0.9 + (1 - 0.3)) = 0.8.
  assert float(judge.order_averaged_probability(0.9, 0.3)) == pytest.approx(0.8)


def test_ensemble_is_mean_over_principle_axis():
  probs = jnp.array([[0.9, 0.7, 0.2], [0.5, 0.5, 0.5]])  # [B=2, P=3]
  np.testing.assert_allclose(judge.ensemble(probs, axis=1), [0.6, 0.5], rtol=1e-6)
  np.testing.assert_allclose(judge.ensemble(probs.T, 0), [0.6, 0.5], rtol=1e-6)


def test_full_label_pipeline_stays_in_band():
  # [B=4, P=3 principles, 2 orders] option log-probs -> one clamped label per pair.
  rng = np.random.default_rng(2)
  la = rng.normal(size=(4, 3, 2)).astype(np.float32) * 4
  lb = rng.normal(size=(4, 3, 2)).astype(np.float32) * 4
  p = judge.preference_probability(la, lb)
  p_first = judge.order_averaged_probability(p[..., 0], p[..., 1])
  label = judge.clamp_probability(judge.ensemble(p_first, axis=-1), (0.4, 0.6))
  assert label.shape == (4,)
  assert np.all((np.asarray(label) >= 0.4) & (np.asarray(label) <= 0.6))
