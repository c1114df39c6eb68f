"""Bradley-Terry preference-model loss with soft labels, and its metrics.

Pairs always carry an explicit pair axis of size 2: index 0 is the first
response, index 1 the second. ``target`` is the probability that the FIRST
response is preferred (1 = first wins, 0 = second wins, 0.5 = tie), e.g. the
clamped AI-feedback label of ``cai_jax.judge``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_pairs(x: jax.Array, name: str) -> None:
  if x.ndim < 1 or x.shape[-1] != 2:
    raise ValueError(f"{name} must have a trailing pair axis of size 2, got shape {x.shape}")


def soft_bt_cross_entropy(margin: jax.Array, target: jax.Array) -> jax.Array:
  """Per-pair soft-label Bradley-Terry cross-entropy.

  ``-(t * log sigmoid(m) + (1 - t) * log sigmoid(-m))``, computed with
  ``log_sigmoid`` so it is finite and has finite gradients for any margin.
  Its minimum over ``m`` is at ``sigmoid(m) = t``, i.e. ``m = logit(t)``.

  Args:
    margin: [...] score margin of the first response over the second.
    target: [...] probability that the first response is preferred.

  Returns:
    [...] float32 loss per pair.
  """
  m = jnp.asarray(margin, jnp.float32)
  t = jnp.asarray(target, jnp.float32)
  return -(t * jax.nn.log_sigmoid(m) + (1.0 - t) * jax.nn.log_sigmoid(-m))


def preference_loss(rewards: jax.Array, target: jax.Array) -> jax.Array:
  """Mean soft-label Bradley-Terry cross-entropy of a preference model.

  P(first preferred) = sigmoid(r0 - r1) (Bradley-Terry); the loss is the binary
  cross-entropy of that probability against the soft label ``target``:
  ``-(t log sigmoid(r0 - r1) + (1 - t) log sigmoid(r1 - r0))``, averaged over B.
  With ``t = 0.5`` the loss only pulls the margin toward 0.

  Bai et al. 2022, "Constitutional AI", Sec. 4.1 (PM trained on soft AI labels);
  Bradley & Terry 1952; Christiano et al. 2017.

  Args:
    rewards: [B, 2] scalar PM scores of (first, second) response.
    target: [B] probability in [0, 1] that the first response is preferred.

  Returns:
    Scalar float32 mean loss.
  """
  _check_pairs(rewards, "rewards")
  r = jnp.asarray(rewards, jnp.float32)
  return jnp.mean(soft_bt_cross_entropy(r[..., 0] - r[..., 1], target))


def expected_calibration_error(prob: jax.Array, target: jax.Array, *,
                               num_bins: int = 10) -> jax.Array:
  """Expected calibration error of predicted probabilities vs (soft) labels.

  Predictions are binned into ``num_bins`` equal-width bins on [0, 1]; ECE is
  ``sum_b (n_b / N) * |mean(prob in b) - mean(target in b)|``. With soft labels
  the mean target of a bin plays the role of the empirical frequency.

  Args:
    prob: [N] predicted probabilities (here P(first preferred)).
    target: [N] labels in [0, 1] (hard or soft).
    num_bins: number of bins (a Python int; static under jit).

  Returns:
    Scalar float32 ECE in [0, 1].
  """
  p = jnp.asarray(prob, jnp.float32).reshape(-1)
  t = jnp.asarray(target, jnp.float32).reshape(-1)
  idx = jnp.clip(jnp.floor(p * num_bins).astype(jnp.int32), 0, num_bins - 1)
  onehot = jax.nn.one_hot(idx, num_bins, dtype=jnp.float32)  # [N, nb]
  count = onehot.sum(0)
  gap = jnp.abs(onehot.T @ p - onehot.T @ t)  # |sum p - sum t| per bin = n_b * |mean gap|
  return jnp.sum(gap) / jnp.maximum(count.sum(), 1.0)


def preference_metrics(rewards: jax.Array, target: jax.Array, *,
                       num_bins: int = 10) -> dict[str, jax.Array]:
  """Diagnostics of a preference model on a batch of labelled pairs.

  Pairs are oriented by their majority label: the "chosen" response is the
  first when ``target > 0.5`` and the second when ``target < 0.5``. Ties
  (``target == 0.5``) have no majority and are EXCLUDED from accuracy and
  margin (they still count in the ECE, which uses soft labels directly).

  Args:
    rewards: [B, 2] PM scores of (first, second) response.
    target: [B] probability that the first response is preferred.
    num_bins: ECE bins (static).

  Returns:
    Dict of float32 scalars:
      ``preference/accuracy``: fraction of decided pairs whose chosen response
        scores strictly higher (0 when every pair is a tie);
      ``preference/margin``: mean chosen-minus-rejected score over decided pairs;
      ``preference/ece``: ECE of sigmoid(r0 - r1) against ``target``;
      ``preference/decided``: number of non-tie pairs.
  """
  _check_pairs(rewards, "rewards")
  r = jnp.asarray(rewards, jnp.float32)
  t = jnp.asarray(target, jnp.float32)
  margin = r[..., 0] - r[..., 1]
  sign = jnp.sign(t - 0.5)  # +1 first chosen, -1 second chosen, 0 tie
  decided = jnp.abs(sign)
  n = jnp.sum(decided)
  oriented = sign * margin
  return {
      "preference/accuracy": jnp.sum(decided * (oriented > 0)) / jnp.maximum(n, 1.0),
      "preference/margin": jnp.sum(oriented) / jnp.maximum(n, 1.0),
      "preference/ece": expected_calibration_error(jax.nn.sigmoid(margin), t,
                                                   num_bins=num_bins),
      "preference/decided": n,
  }
