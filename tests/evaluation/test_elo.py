"""Elo from pairwise comparisons: closed-form fits, recovery of known ratings, bootstrap
coverage, seeding, validation and rating agreement.

References are computed here, independently of ``cai_jax.evaluation.elo``: closed forms,
a per-comparison likelihood with finite differences, SciPy's optimiser, the Fisher
information of the Bradley-Terry law, and SciPy's rank correlation.
"""
import math

import numpy as np
import pytest

from cai_jax.evaluation import elo

S = 400.0 / math.log(10.0)
TRUE = np.array([-300.0, -150.0, -50.0, 0.0, 100.0, 250.0])
PAIRS = [(i, j) for i in range(len(TRUE)) for j in range(i + 1, len(TRUE))]


def _cmp(rows):
  """Comparison from (a, b, p_a) rows, one prompt per row."""
  a, b, p = zip(*rows)
  return elo.Comparison(a=np.array(a), b=np.array(b), p_a=np.array(p, float),
                        prompt=np.arange(len(rows)))


def _odds_gap(odds):
  return 400.0 * math.log10(odds)


def _synthetic(seed, num_prompts, true=TRUE):
  """Every pair once per prompt, random order, binary outcome drawn from the BT law."""
  rng = np.random.default_rng(seed)
  a = np.tile([i for i, _ in PAIRS], num_prompts)
  b = np.tile([j for _, j in PAIRS], num_prompts)
  swap = rng.random(len(a)) < 0.5
  a, b = np.where(swap, b, a), np.where(swap, a, b)
  p_win = 1.0 / (1.0 + 10.0 ** (-(true[a] - true[b]) / 400.0))
  p_a = (rng.random(len(a)) < p_win).astype(float)
  return elo.Comparison(a=a, b=b, p_a=p_a, prompt=np.repeat(np.arange(num_prompts),
                                                            len(PAIRS)))


def _nll(r, c):
  """Per-comparison negative log-likelihood of ratings ``r`` (Elo points)."""
  p_win = 1.0 / (1.0 + 10.0 ** (-(r[c.a] - r[c.b]) / 400.0))
  return -np.sum(c.p_a * np.log(p_win) + (1.0 - c.p_a) * np.log1p(-p_win))


def _nll_grad(r, c):
  """Its gradient, d/dr_a = (P(a wins) - p_a) / S per comparison, summed per model."""
  g = (1.0 / (1.0 + 10.0 ** (-(r[c.a] - r[c.b]) / 400.0)) - c.p_a) / S
  return np.bincount(c.a, g, len(r)) - np.bincount(c.b, g, len(r))


def _fisher_se(true, c):
  """Standard errors of mean-zero ratings from the Fisher information at ``true``."""
  m = len(true)
  p = 1.0 / (1.0 + 10.0 ** (-(true[c.a] - true[c.b]) / 400.0))
  info = np.zeros((m, m))
  for a, b, w in zip(c.a, c.b, p * (1 - p) / S**2):
    e = np.zeros(m)
    e[a], e[b] = 1.0, -1.0
    info += w * np.outer(e, e)
  cov = np.linalg.inv(info + 1.0 / m) - 1.0 / m     # pseudo-inverse on mean-zero ratings
  return np.sqrt(np.diag(cov))


# ----------------------------------------------------------------- closed forms


def test_two_models_three_to_one_odds():
  rows = [(0, 1, 0.75)] * 5 + [(1, 0, 0.25)] * 3     # both orders, same judgment
  r = elo.fit_elo(_cmp(rows), 2, l2=0.0)
  gap = _odds_gap(3.0)                               # 190.85 points
  np.testing.assert_allclose(r, [gap / 2, -gap / 2], rtol=0, atol=1e-6)
  assert elo.expected_win_rate(r, 0, 1) == pytest.approx(0.75, abs=1e-12)
  r_default = elo.fit_elo(_cmp(rows), 2)             # the tiny ridge barely shrinks
  assert abs((r_default[0] - r_default[1]) - gap) < 1e-3
  np.testing.assert_allclose(elo.fit_elo(_cmp([(0, 1, 0.5)] * 4), 2, l2=0.0), [0, 0],
                             atol=1e-9)


def test_three_models_consistent_chain_unequal_counts():
  # Odds 2:1 (0 over 1), 3:1 (1 over 2), 6:1 (0 over 2) fit every pair exactly.
  rows = [(0, 1, 2 / 3)] * 3 + [(1, 2, 3 / 4)] * 7 + [(2, 0, 1 / 7)] * 2
  r = elo.fit_elo(_cmp(rows), 3, l2=0.0)
  r2 = -(_odds_gap(3.0) + (_odds_gap(2.0) + _odds_gap(3.0))) / 3
  want = [r2 + _odds_gap(6.0), r2 + _odds_gap(3.0), r2]
  np.testing.assert_allclose(r, want, rtol=0, atol=1e-6)
  assert abs(np.sum(r)) < 1e-9
  anchored = elo.fit_elo(_cmp(rows), 3, l2=0.0, anchor=2)
  np.testing.assert_allclose(anchored, np.array(want) - want[2], rtol=0, atol=1e-6)


def test_three_models_tree_and_cycle():
  # A tree (no 1-2 games) fits each edge exactly.
  r = elo.fit_elo(_cmp([(0, 1, 0.75)] * 4 + [(0, 2, 0.5)] * 9), 3, l2=0.0)
  np.testing.assert_allclose([r[0] - r[1], r[0] - r[2]], [_odds_gap(3.0), 0.0], atol=1e-6)
  # Rock-paper-scissors: symmetric, so all equal.
  r = elo.fit_elo(_cmp([(0, 1, 0.8), (1, 2, 0.8), (2, 0, 0.8)] * 5), 3, l2=0.0)
  np.testing.assert_allclose(r, 0.0, atol=1e-6)


def test_three_models_inconsistent_closed_form():
  # p01 = p12 = 1/2, p02 = 29/30: with r = (t, 0, -t) the score equations read
  # σ(t) - 1/2 + σ(2t) - 29/30 = 0, solved by t = ln 2 (2/3 + 4/5 = 1/2 + 29/30).
  rows = [(0, 1, 0.5)] * 4 + [(1, 2, 0.5)] * 4 + [(0, 2, 29 / 30)] * 4
  r = elo.fit_elo(_cmp(rows), 3, l2=0.0)
  np.testing.assert_allclose(r, [_odds_gap(2.0), 0.0, -_odds_gap(2.0)], rtol=0, atol=1e-6)


def test_soft_outcome_equals_expanded_binary_outcomes():
  soft = _cmp([(0, 1, 0.7), (1, 2, 0.4), (0, 2, 0.9)] * 10)
  binary = _cmp([(0, 1, 1.0)] * 7 + [(0, 1, 0.0)] * 3 + [(1, 2, 1.0)] * 4 + [(2, 1, 1.0)] * 6
                + [(0, 2, 1.0)] * 9 + [(2, 0, 1.0)])
  np.testing.assert_allclose(elo.fit_elo(soft, 3, l2=0.0), elo.fit_elo(binary, 3, l2=0.0),
                             rtol=0, atol=1e-6)


def test_disconnected_components_and_unseen_model():
  rows = [(0, 1, 0.75)] * 3 + [(3, 2, 0.9)] * 2
  for l2 in (0.0, 1e-6):
    r = elo.fit_elo(_cmp(rows), 5, l2=l2)
    g1, g2 = _odds_gap(3.0), _odds_gap(9.0)
    np.testing.assert_allclose(r, [g1 / 2, -g1 / 2, -g2 / 2, g2 / 2, 0.0], rtol=0, atol=1e-3)


def test_all_wins_stay_finite_and_ordered():
  rows = [(0, 1, 1.0), (1, 2, 1.0), (0, 2, 1.0)] * 3
  r = elo.fit_elo(_cmp(rows), 3)
  assert np.all(np.isfinite(r)) and r[0] > r[1] > r[2] and abs(np.sum(r)) < 1e-6
  with pytest.raises(RuntimeError, match="converge|singular"):
    elo.fit_elo(_cmp(rows), 3, l2=0.0)


def test_non_convergence_raises():
  with pytest.raises(RuntimeError, match="did not converge in 1 iterations"):
    elo.fit_elo(_synthetic(0, 5), len(TRUE), max_iter=1)


def test_no_comparisons_gives_zeros():
  empty = elo.Comparison(a=[], b=[], p_a=[], prompt=[])
  np.testing.assert_array_equal(elo.fit_elo(empty, 3), np.zeros(3))


# ---------------------------------------------------------------- recovery


def test_recovers_known_ratings_and_matches_generic_optimizer():
  c = _synthetic(1, 200)
  r = elo.fit_elo(c, len(TRUE), l2=0.0)
  truth = TRUE - TRUE.mean()
  z = (r - truth) / _fisher_se(TRUE, c)
  assert np.all(np.abs(z) < 4), z
  # The fit is a stationary point of the per-comparison likelihood: central finite
  # differences vanish there, and they match the test's analytic gradient elsewhere...
  h, eye = 1e-3, np.eye(len(TRUE))
  fd = np.array([(_nll(r + h * e, c) - _nll(r - h * e, c)) / (2 * h) for e in eye])
  assert np.max(np.abs(fd)) < 1e-7, fd
  assert np.max(np.abs(_nll_grad(r, c))) < 1e-9
  off = r + np.array([30.0, -20.0, 5.0, 0.0, -40.0, 10.0])
  fd = np.array([(_nll(off + h * e, c) - _nll(off - h * e, c)) / (2 * h) for e in eye])
  np.testing.assert_allclose(fd, _nll_grad(off, c), rtol=1e-6, atol=1e-9)
  assert np.max(np.abs(fd)) > 0.1
  # ...and a generic quasi-Newton minimiser of it lands on the same ratings.
  optimize = pytest.importorskip("scipy.optimize")

  def full(v):                                       # mean-zero parametrisation
    return np.append(v, -np.sum(v))

  res = optimize.minimize(lambda v: _nll(full(v), c), np.zeros(len(TRUE) - 1),
                          jac=lambda v: _nll_grad(full(v), c)[:-1] - _nll_grad(full(v), c)[-1],
                          method="BFGS", options={"gtol": 1e-10})
  np.testing.assert_allclose(r, full(res.x), rtol=0, atol=1e-4)


def test_scale_option_rescales():
  c = _synthetic(2, 20)
  r = elo.fit_elo(c, len(TRUE), l2=0.0)
  r_logit = elo.fit_elo(c, len(TRUE), l2=0.0, scale=1.0)
  np.testing.assert_allclose(r_logit * S, r, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_coverage_is_nominal():
  hits_model, hits_diff, se_ratio = [], [], []
  truth = TRUE - TRUE.mean()
  diffs = [(i, j) for i, j in PAIRS]
  for seed in range(50):
    c = _synthetic(100 + seed, 40)
    res = elo.bootstrap_elo(c, len(TRUE), num_samples=200, seed=seed)
    hits_model += list((res.lower <= truth) & (truth <= res.upper))
    for i, j in diffs:
      d = res.samples[:, i] - res.samples[:, j]
      lo, hi = np.quantile(d, [0.025, 0.975])
      hits_diff.append(lo <= TRUE[i] - TRUE[j] <= hi)
    se_ratio.append(res.stderr / _fisher_se(TRUE, c))
    assert np.all(res.lower <= res.ratings) and np.all(res.ratings <= res.upper)
  cov_model, cov_diff = np.mean(hits_model), np.mean(hits_diff)
  assert 0.85 <= cov_model <= 0.99, cov_model
  assert 0.85 <= cov_diff <= 0.99, cov_diff
  assert 0.85 < np.mean(se_ratio) < 1.15, np.mean(se_ratio)


def test_bootstrap_is_seeded():
  c = _synthetic(3, 15)
  x = elo.bootstrap_elo(c, len(TRUE), num_samples=50, seed=7)
  y = elo.bootstrap_elo(c, len(TRUE), num_samples=50, seed=7)
  z = elo.bootstrap_elo(c, len(TRUE), num_samples=50, seed=8)
  for f in elo.EloBootstrap._fields:
    np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
  assert not np.array_equal(x.lower, z.lower) and not np.array_equal(x.upper, z.upper)
  np.testing.assert_array_equal(x.ratings, elo.fit_elo(c, len(TRUE)))


def test_bootstrap_resamples_whole_prompts():
  c = _synthetic(4, 30)
  base = elo.bootstrap_elo(c, len(TRUE), num_samples=100, seed=0)
  twice = np.concatenate([np.arange(len(c))] * 2)

  def doubled(prompt):
    return elo.Comparison(a=c.a[twice], b=c.b[twice], p_a=c.p_a[twice], prompt=prompt)

  # Each row duplicated within its prompt: the same draws, the same fits.
  same = elo.bootstrap_elo(doubled(c.prompt[twice]), len(TRUE), num_samples=100, seed=0)
  np.testing.assert_allclose(same.samples, base.samples, rtol=0, atol=1e-2)
  # Duplicates as prompts of their own: twice the data, intervals ~1/sqrt(2) as wide.
  split = np.concatenate([c.prompt, c.prompt + 1000])
  wide = elo.bootstrap_elo(doubled(split), len(TRUE), num_samples=100, seed=0)
  ratio = np.mean(wide.stderr / base.stderr)
  assert 0.55 < ratio < 0.85, ratio


def test_bootstrap_anchor():
  c = _synthetic(5, 15)
  res = elo.bootstrap_elo(c, len(TRUE), num_samples=40, anchor=3)
  assert res.ratings[3] == 0 and res.lower[3] == 0 and res.upper[3] == 0
  free = elo.bootstrap_elo(c, len(TRUE), num_samples=40)
  np.testing.assert_allclose(res.samples, free.samples - free.samples[:, 3:4], atol=1e-9)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, match", [
    (dict(b=[1, 2]), r"Comparison\.b has 2 rows"),
    (dict(a=[0, -1, 0]), r"Comparison\.a\[1\] = -1"),
    (dict(b=[1, 2, 0]), r"Comparison\.b\[2\] = 0 equals Comparison\.a\[2\]"),
    (dict(p_a=[1.5, 0.5, 0.5]), r"Comparison\.p_a\[0\] = 1\.5 is outside \[0, 1\]"),
    (dict(p_a=[0.5, np.nan, 0.5]), r"Comparison\.p_a\[1\] = nan is not finite"),
    (dict(p_a=["x", "y", "z"]), r"Comparison\.p_a"),
    (dict(prompt=[0.0, 1.5, 2.0]), r"Comparison\.prompt\[1\] = 1\.5 is not an integer"),
    (dict(a=["0", "1", "0"]), r"Comparison\.a must hold integers"),
    (dict(a=[[0, 1, 0]]), r"Comparison\.a must be 1-D"),
])
def test_validation_names_field_and_row(kwargs, match):
  fields = dict(a=[0, 1, 0], b=[1, 2, 2], p_a=[0.5, 0.5, 0.5], prompt=[0, 1, 2])
  with pytest.raises(ValueError, match=match):
    elo.Comparison(**{**fields, **kwargs})


def test_validation_in_fit():
  c = elo.Comparison(a=[0, 1, 0], b=[1, 5, 2], p_a=[0.5, 0.5, 0.5], prompt=[0, 1, 2])
  with pytest.raises(ValueError, match=r"Comparison\.b\[1\] = 5 is out of range for 3"):
    elo.fit_elo(c, 3)
  with pytest.raises(ValueError, match="anchor"):
    elo.fit_elo(c, 6, anchor=6)
  with pytest.raises(ValueError, match="l2"):
    elo.fit_elo(c, 6, l2=-1.0)
  with pytest.raises(ValueError, match="level"):
    elo.bootstrap_elo(c, 6, level=1.5)
  with pytest.raises(ValueError):
    c.a[0] = 1                                    # frozen and read-only
  integral = elo.Comparison(a=[0.0, 1.0], b=[1, 0], p_a=[1, 0], prompt=[3, 3])
  assert integral.a.dtype == np.int64 and integral.p_a.dtype == np.float64


# ---------------------------------------------------------------- win rates, agreement


def test_win_rates():
  assert elo.expected_win_rate([400.0, 0.0], 0, 1) == pytest.approx(10 / 11, abs=1e-12)
  m = elo.win_matrix(TRUE)
  np.testing.assert_allclose(np.diag(m), 0.5)
  np.testing.assert_allclose(m + m.T, 1.0, atol=1e-12)
  assert m[5, 0] == pytest.approx(1 / (1 + 10 ** (-550 / 400)), abs=1e-12)


def test_agreement():
  x = np.array([-120.0, 3.0, 40.0, 41.0, 300.0])
  up = elo.agreement(x, np.exp(x / 50.0))
  assert up.spearman == pytest.approx(1.0, abs=1e-12) and up.pearson < 0.99
  down = elo.agreement(x, -x ** 3)
  assert down.spearman == pytest.approx(-1.0, abs=1e-12)
  assert elo.agreement(x, 2 * x + 7).pearson == pytest.approx(1.0, abs=1e-12)
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=12), np.round(rng.normal(size=12))   # b has ties
  got = elo.agreement(a, b)
  assert got.pearson == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
  stats = pytest.importorskip("scipy.stats")
  assert got.spearman == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
  assert math.isnan(elo.agreement(x, np.ones(5)).spearman)
  with pytest.raises(ValueError):
    elo.agreement(x, x[:3])
