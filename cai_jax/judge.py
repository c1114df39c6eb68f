"""AI-feedback preference labels from a judge's option log-probabilities.

The feedback model reads a comparison prompt ending in an answer slot and we
score the two option tokens, e.g. "(A)" and "(B)". What comes from where:

* Paper-specified (Bai et al. 2022, "Constitutional AI", Sec. 4.1): normalise the
  two option log-probs to a probability (``preference_probability``) and, for
  chain-of-thought labels, clamp it to a band (40-60%, ``clamp=(0.4, 0.6)``).
  The paper also samples a comparison principle per label and reports that
  ensembling over principles gives more robust PM behaviour; ``ensemble`` (a
  plain mean over a principle axis) is our implementation of that ensemble.
* Not in Bai et al.: averaging both answer orders against position bias
  (``order_averaged_probability``) follows Lee et al. 2023, "RLAIF", Sec. 2.1.1.

Suggested order (as in the pipeline): per principle, probability in both orders
-> order average -> ensemble over principles -> clamp once at the end.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_clamp(clamp: tuple[float, float]) -> tuple[float, float]:
  try:
    lo, hi = (float(c) for c in clamp)
  except (TypeError, ValueError) as e:
    raise ValueError(f"clamp must be a pair of floats (lo, hi), got {clamp!r}") from e
  if not 0.0 <= lo <= hi <= 1.0:
    raise ValueError(f"clamp=(lo, hi) must satisfy 0 <= lo <= hi <= 1, got {clamp!r}")
  return lo, hi


def clamp_probability(p: jax.Array, clamp: tuple[float, float]) -> jax.Array:
  """Clips probabilities into the band ``clamp = (lo, hi)``.

  Bai et al. 2022, Sec. 4.1 (CoT labels clamped to 40-60%).

  Args:
    p: [...] probabilities.
    clamp: (lo, hi) with 0 <= lo <= hi <= 1 (concrete Python numbers).

  Returns:
    [...] float32 probabilities in [lo, hi].

  Raises:
    ValueError: if ``clamp`` is not a valid band.
  """
  lo, hi = _check_clamp(clamp)
  return jnp.clip(jnp.asarray(p, jnp.float32), lo, hi)


def preference_probability(logp_a: jax.Array, logp_b: jax.Array, *,
                           clamp: tuple[float, float] | None = None) -> jax.Array:
  """P(A) = exp(a) / (exp(a) + exp(b)): softmax over the two options.

  Computed as ``sigmoid(a - b)``, which is exact and stable for any finite
  inputs (only the difference matters, so unnormalised logits work too).

  Bai et al. 2022, Sec. 4.1.

  Args:
    logp_a: [...] log-prob (or logit) of option A at the answer position.
    logp_b: [...] the same for option B (broadcastable with ``logp_a``).
    clamp: optional (lo, hi) band the probability is clipped to, e.g. (0.4, 0.6)
      for chain-of-thought labels.

  Returns:
    [...] float32 probability that A is preferred.

  Raises:
    ValueError: if ``clamp`` is given and not 0 <= lo <= hi <= 1.
  """
  if clamp is not None:
    _check_clamp(clamp)  # fail before any computation
  a = jnp.asarray(logp_a, jnp.float32)
  b = jnp.asarray(logp_b, jnp.float32)
  p = jax.nn.sigmoid(a - b)
  return p if clamp is None else clamp_probability(p, clamp)


def order_averaged_probability(p_a_first: jax.Array,
                               p_a_second_swapped: jax.Array) -> jax.Array:
  """Probability that the FIRST response is preferred, averaged over both orders.

  ``p_a_first``: P(option A) when the pair is shown as (A = first, B = second).
  ``p_a_second_swapped``: P(option A) when shown swapped (A = second, B = first),
  so there P(first preferred) = 1 - P(option A). Result:
  ``0.5 * (p_a_first + (1 - p_a_second_swapped))``.

  Lee et al. 2023, "RLAIF vs. RLHF", Sec. 2.1.1 (position-bias mitigation); not
  part of Bai et al. 2022.

  Args:
    p_a_first: [...] P(A) in the original order.
    p_a_second_swapped: [...] P(A) in the swapped order.

  Returns:
    [...] float32 P(first response preferred).
  """
  p1 = jnp.asarray(p_a_first, jnp.float32)
  p2 = jnp.asarray(p_a_second_swapped, jnp.float32)
  return 0.5 * (p1 + (1.0 - p2))


def ensemble(probs: jax.Array, axis: int = -1) -> jax.Array:
  """Mean preference probability over an axis of principles.

  Bai et al. 2022, Sec. 4.1 (ensembling over principles); the arithmetic mean
  of probabilities is our choice.

  Args:
    probs: [..., P, ...] probabilities with a principle axis.
    axis: the principle axis.

  Returns:
    float32 probabilities with ``axis`` removed.
  """
  return jnp.mean(jnp.asarray(probs, jnp.float32), axis=axis)


def label_from_probabilities(p_a_order1, p_a_order2=None, *,
                             clamp: tuple[float, float] | None = None) -> float:
  """P(first answer preferred) from per-principle option probabilities.

  Per principle: both orders averaged (``order_averaged_probability``) when the swapped
  order was scored; then the mean over principles (``ensemble``); then the clamp, once,
  at the end (the order suggested in the module docstring).

  Args:
    p_a_order1: [P] P("(A)") per principle with the first answer shown as (A).
    p_a_order2: [P] the same with the order swapped, or None / empty (one order).
    clamp: optional (lo, hi) band.
  """
  p = jnp.asarray(p_a_order1, jnp.float32)
  if p_a_order2 is not None and len(p_a_order2):
    p = order_averaged_probability(p, jnp.asarray(p_a_order2, jnp.float32))
  p = ensemble(p, axis=-1)
  if clamp is not None:
    p = clamp_probability(p, clamp)
  return float(p)
