"""Elo ratings from pairwise comparisons: Bradley-Terry fit, prompt bootstrap, agreement.

Model ``a`` beats model ``b`` with probability ``sigmoid((r_a - r_b) / scale)``,
``scale = 400 / ln(10)``: a 400-point gap is 10:1 odds (the Elo scale of the Constitutional
AI paper). An outcome is soft: ``p_a`` in [0, 1] is the share of the judgment preferring
``a`` (1 = ``a`` wins, 0.5 = tie); it counts as ``p_a`` of a win and ``1 - p_a`` of a loss.

Ratings are defined up to a shift. They come back mean-zero by default (each connected
component of the comparison graph centred on its own; models in different components
are not comparable), or shifted so that an ``anchor`` model rates 0. Higher is better.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)   # rating points per unit of log-odds


def _sigmoid(z):
  return np.exp(-np.logaddexp(0.0, -z))   # accurate in both tails


def _reject(bad_rows: np.ndarray, message) -> None:
  """Raises ValueError(message(first bad row)) if any row is bad."""
  bad = np.flatnonzero(bad_rows)
  if bad.size:
    raise ValueError(message(bad[0]))


def _field(name: str, values, integer: bool) -> np.ndarray:
  """A validated 1-D int64 (``integer``) or float64 column of a Comparison."""
  x = np.asarray(values)
  if x.ndim != 1:
    raise ValueError(f"Comparison.{name} must be 1-D, got shape {x.shape}")
  if x.dtype.kind not in "iuf":
    raise ValueError(f"Comparison.{name} must hold {'integers' if integer else 'numbers'}, "
                     f"got dtype {x.dtype}")
  x = x.astype(np.float64) if x.dtype.kind == "f" or not integer else x
  _reject(~np.isfinite(x), lambda i: f"Comparison.{name}[{i}] = {x[i]} is not finite")
  if integer:
    _reject(x != np.round(x), lambda i: f"Comparison.{name}[{i}] = {x[i]} is not an integer")
  return x.astype(np.int64) if integer else np.array(x, dtype=np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class Comparison:
  """Pairwise judgments, one row each (validated and frozen on construction).

  Attributes:
    a: [n] int, index of the first model of each comparison (>= 0).
    b: [n] int, index of the second model (>= 0, != a).
    p_a: [n] float in [0, 1], the share of the judgment preferring a's answer.
    prompt: [n] int, the prompt id: the bootstrap draws prompts, each with all its rows.
  """

  a: np.ndarray
  b: np.ndarray
  p_a: np.ndarray
  prompt: np.ndarray

  def __post_init__(self):
    fields = {name: _field(name, getattr(self, name), name != "p_a")
              for name in ("a", "b", "p_a", "prompt")}
    for name, x in fields.items():
      if len(x) != len(fields["a"]):
        raise ValueError(f"Comparison.{name} has {len(x)} rows, but Comparison.a has "
                         f"{len(fields['a'])}")
      x.setflags(write=False)
      object.__setattr__(self, name, x)
    for name in ("a", "b"):
      _reject(fields[name] < 0, lambda i: f"Comparison.{name}[{i}] = {fields[name][i]} < 0")
    _reject(self.a == self.b, lambda i: f"Comparison.b[{i}] = {self.b[i]} equals "
            f"Comparison.a[{i}]: a model compared with itself")
    _reject((self.p_a < 0) | (self.p_a > 1),
            lambda i: f"Comparison.p_a[{i}] = {self.p_a[i]} is outside [0, 1]")

  def __len__(self) -> int:
    return len(self.a)

  def check_models(self, num_models: int) -> None:
    """Raises ValueError unless every model index is below ``num_models``."""
    if num_models < 1:
      raise ValueError(f"num_models must be >= 1, got {num_models}")
    for name, x in (("a", self.a), ("b", self.b)):
      _reject(x >= num_models, lambda i: f"Comparison.{name}[{i}] = {x[i]} is out of range "
              f"for {num_models} models")


def _wins(c: Comparison, num_models: int, weights: np.ndarray | None = None) -> np.ndarray:
  """[m, m] soft win totals: ``W[i, j]`` = weighted share of judgments for i over j."""
  m, w = num_models, (np.ones(len(c)) if weights is None else weights)
  idx = np.concatenate([c.a * m + c.b, c.b * m + c.a])
  mass = np.concatenate([w * c.p_a, w * (1.0 - c.p_a)])
  return np.bincount(idx, weights=mass, minlength=m * m).reshape(m, m)


def _centring(games: np.ndarray) -> np.ndarray:
  """[m, m] projector that subtracts each connected component's mean."""
  m = games.shape[0]
  linked = (games > 0) | np.eye(m, dtype=bool)
  labels, old = np.arange(m), None
  while not np.array_equal(labels, old):   # until each model has the least label it reaches
    old, labels = labels, np.min(np.where(linked, labels[None, :], m), axis=1)
  same = labels[:, None] == labels[None, :]
  return np.eye(m) - same / same.sum(axis=1, keepdims=True)


def _loss(x: np.ndarray, wins: np.ndarray, l2: float) -> float:
  """Negative log-likelihood in log-odds units: each win of i over j costs -log σ(x_i - x_j)."""
  return float(np.sum(wins * np.logaddexp(0.0, x[None, :] - x[:, None])) + 0.5 * l2 * x @ x)


def _newton(wins: np.ndarray, *, l2: float, scale: float, tol: float, max_iter: int,
            x0: np.ndarray | None = None) -> np.ndarray:
  """Log-odds ratings minimising ``_loss``, each component mean-zero.

  The Hessian is the graph Laplacian with edge weights n_ij σ(1 - σ), plus l2; on the
  component-mean directions (where the loss is flat) it is replaced by the identity,
  and the steps stay in the mean-zero subspace. Backtracking keeps every step downhill.
  Converged when a full step moves no rating by more than ``tol`` points (x ``scale``).
  """
  m, proj, step_pts = wins.shape[0], _centring(wins + wins.T), np.inf
  x = np.zeros(m) if x0 is None else proj @ x0
  for _ in range(max_iter):
    s = _sigmoid(x[:, None] - x[None, :])              # σ(x_i - x_j)
    resid = wins.T * s - wins * s.T                    # exactly antisymmetric
    grad = proj @ (resid.sum(axis=1) + l2 * x)
    q = (wins + wins.T) * s * s.T
    hess = np.diag(q.sum(axis=1)) - q + l2 * np.eye(m) + (np.eye(m) - proj)
    try:
      step = proj @ np.linalg.solve(hess, grad)
    except np.linalg.LinAlgError as e:
      raise RuntimeError(f"fit_elo: singular Hessian ({e}); try l2 > 0") from e
    step_pts = float(np.max(np.abs(step), initial=0.0)) * scale
    if step_pts <= tol:
      return x - step
    f0, t, slope = _loss(x, wins, l2), 1.0, float(grad @ step)
    while _loss(x - t * step, wins, l2) > f0 - 1e-4 * t * slope + 1e-12 * abs(f0):
      t *= 0.5
      if t < 1e-10:
        raise RuntimeError(f"fit_elo: line search failed (step {step_pts:.3g} points)")
    x = x - t * step
  raise RuntimeError(f"fit_elo: Newton's method did not converge in {max_iter} iterations "
                     f"(last step {step_pts:.3g} points > tol {tol:g}); raise max_iter or l2")


def _to_ratings(x: np.ndarray, scale: float, anchor: int | None) -> np.ndarray:
  r = x * scale
  return r - r[..., anchor, None] if anchor is not None else r


def _check_args(c: Comparison, num_models: int, anchor: int | None, l2: float,
                scale: float) -> None:
  c.check_models(num_models)
  if anchor is not None and not 0 <= anchor < num_models:
    raise ValueError(f"anchor = {anchor} is out of range for {num_models} models")
  if not (l2 >= 0 and scale > 0):
    raise ValueError(f"need l2 >= 0 and scale > 0, got l2={l2}, scale={scale}")


def fit_elo(comparisons: Comparison, num_models: int, *, l2: float = 1e-6,
            anchor: int | None = None, scale: float = ELO_SCALE, tol: float = 1e-9,
            max_iter: int = 100) -> np.ndarray:
  """Maximum-likelihood Bradley-Terry ratings on the Elo scale.

  Minimises ``-sum[p_a log σ(d) + (1 - p_a) log σ(-d)] + l2/2 * |r / scale|^2`` over
  ratings ``r``, ``d = (r_a - r_b) / scale``, by Newton's method. The tiny ``l2`` (on the
  log-odds scale) keeps the fit finite when a model wins or loses every comparison and
  shrinks ordinary fits by ~1e-4 points; ``l2=0`` is exact but fails on infinite MLEs.

  Args:
    comparisons: the judgments.
    num_models: number of models; model indices are ``0 .. num_models - 1``.
    l2: ridge strength on log-odds ratings (>= 0).
    anchor: None for mean-zero ratings (per connected component; a model with no
      comparisons rates 0), or a model index whose rating is shifted to 0.
    scale: rating points per unit of log-odds (default 400 / ln 10).
    tol: convergence: the last Newton step moved every rating by <= tol points.
    max_iter: Newton iterations before giving up.

  Returns:
    [num_models] float64 ratings; higher is better.

  Raises:
    ValueError: bad arguments or model indices out of range.
    RuntimeError: Newton's method did not converge.
  """
  _check_args(comparisons, num_models, anchor, l2, scale)
  x = _newton(_wins(comparisons, num_models), l2=l2, scale=scale, tol=tol, max_iter=max_iter)
  return _to_ratings(x, scale, anchor)


class EloBootstrap(NamedTuple):
  """Ratings with prompt-bootstrap uncertainty (all [num_models] unless noted)."""

  ratings: np.ndarray   # fit on the full data
  lower: np.ndarray     # (1 - level) / 2 percentile of the bootstrap ratings
  upper: np.ndarray     # (1 + level) / 2 percentile
  stderr: np.ndarray    # standard deviation of the bootstrap ratings
  samples: np.ndarray   # [num_samples, num_models] bootstrap ratings (e.g. for differences)


def bootstrap_elo(comparisons: Comparison, num_models: int, *, num_samples: int = 1000,
                  seed: int = 0, level: float = 0.95, l2: float = 1e-6,
                  anchor: int | None = None, scale: float = ELO_SCALE, tol: float = 1e-9,
                  max_iter: int = 100) -> EloBootstrap:
  """Percentile intervals from resampling prompts with replacement and refitting.

  A draw takes as many prompts as there are distinct ids, each with all its comparisons
  (drawn k times, they count k times); the same ``seed`` gives identical output. The
  intervals are per model, in the point estimate's convention (mean-zero or anchored);
  ``samples`` gives intervals on differences. Every model should meet others in many
  prompts: a draw that cuts a model off the others centres it on its own (rating 0).

  Args:
    comparisons: the judgments (at least one).
    num_models: number of models.
    num_samples: bootstrap resamples (>= 2).
    seed: seed of ``np.random.default_rng``.
    level: central coverage of the intervals, in (0, 1).
    l2, anchor, scale, tol, max_iter: as in ``fit_elo``.

  Returns:
    EloBootstrap; its ``ratings`` are ``fit_elo`` on all the data.
  """
  if len(comparisons) == 0:
    raise ValueError("bootstrap_elo needs at least one comparison")
  if num_samples < 2 or not 0 < level < 1:
    raise ValueError(f"need num_samples >= 2 and 0 < level < 1, got {num_samples}, {level}")
  _check_args(comparisons, num_models, anchor, l2, scale)
  opts = dict(l2=l2, scale=scale, tol=tol, max_iter=max_iter)
  full = _newton(_wins(comparisons, num_models), **opts)
  prompts, cluster = np.unique(comparisons.prompt, return_inverse=True)
  rng, samples = np.random.default_rng(seed), np.empty((num_samples, num_models))
  for k in range(num_samples):   # draw len(prompts) prompts with replacement
    counts = np.bincount(rng.integers(0, len(prompts), size=len(prompts)),
                         minlength=len(prompts))
    wins = _wins(comparisons, num_models, counts[cluster].astype(np.float64))
    samples[k] = _newton(wins, x0=full, **opts)
  samples = _to_ratings(samples, scale, anchor)
  lower, upper = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
  return EloBootstrap(ratings=_to_ratings(full, scale, anchor), lower=lower, upper=upper,
                      stderr=samples.std(axis=0, ddof=1), samples=samples)


def expected_win_rate(ratings, i: int, j: int, *, scale: float = ELO_SCALE) -> float:
  """P(model i beats model j) under the fitted law: σ((r_i - r_j) / scale)."""
  return float(win_matrix(np.asarray(ratings)[[i, j]], scale=scale)[0, 1])


def win_matrix(ratings, *, scale: float = ELO_SCALE) -> np.ndarray:
  """[m, m] matrix of P(row model beats column model); the diagonal is 0.5."""
  r = np.asarray(ratings, dtype=np.float64)
  return _sigmoid((r[:, None] - r[None, :]) / scale)


class Agreement(NamedTuple):
  """How well two rating vectors agree."""

  spearman: float   # rank correlation (ties get their average rank)
  pearson: float    # linear correlation of the ratings


def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  xs = x[order]
  starts = np.concatenate([[True], xs[1:] != xs[:-1]])
  first = np.flatnonzero(starts)
  last = np.concatenate([first[1:], [len(x)]]) - 1
  ranks = np.empty(len(x))
  ranks[order] = ((first + last) / 2 + 1)[np.cumsum(starts) - 1]   # ties share the mean
  return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = x - x.mean(), y - y.mean()
  denom = math.sqrt(float(x @ x) * float(y @ y))
  return float(np.clip(x @ y / denom, -1.0, 1.0)) if denom > 0 else math.nan


def agreement(ratings_x, ratings_y) -> Agreement:
  """Spearman and Pearson correlation of two rating vectors over the same models (e.g.
  AI-judge Elo against oracle Elo). A constant vector gives NaN correlations.

  Raises:
    ValueError: shapes differ, fewer than two models, or non-finite values.
  """
  x = np.asarray(ratings_x, dtype=np.float64)
  y = np.asarray(ratings_y, dtype=np.float64)
  if x.ndim != 1 or x.shape != y.shape:
    raise ValueError(f"ratings must be 1-D and of one shape, got {x.shape} and {y.shape}")
  if len(x) < 2 or not np.all(np.isfinite(x) & np.isfinite(y)):
    raise ValueError(f"agreement needs >= 2 models and finite ratings, got {x} and {y}")
  return Agreement(spearman=_pearson(_average_ranks(x), _average_ranks(y)),
                   pearson=_pearson(x, y))
