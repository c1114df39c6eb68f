"""Direct Preference Optimisation (DPO) on pairs, with soft (conservative) labels.

Inputs are summed sequence log-probabilities with an explicit pair axis:
``[B, 2]``, index 0 = first response, index 1 = second. ``target`` is the
probability that the first response is preferred; ``None`` means 1 (the first
response is the chosen one, as in ordinary chosen/rejected data).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cai_jax.losses.preference import _check_pairs, soft_bt_cross_entropy


def implicit_rewards(policy_logps: jax.Array, reference_logps: jax.Array, *,
                     beta: float | jax.Array) -> jax.Array:
  """DPO implicit rewards ``beta * (log pi(y|x) - log pi_ref(y|x))``.

  Rafailov et al. 2023, "Direct Preference Optimization", Sec. 4 / Eq. 5.

  Args:
    policy_logps: [B, 2] summed log-probs of each response under the policy.
    reference_logps: [B, 2] the same under the frozen reference policy.
    beta: KL-regularisation strength (> 0).

  Returns:
    [B, 2] float32 implicit rewards.
  """
  _check_pairs(policy_logps, "policy_logps")
  _check_pairs(reference_logps, "reference_logps")
  pi = jnp.asarray(policy_logps, jnp.float32)
  ref = jnp.asarray(reference_logps, jnp.float32)
  return jnp.asarray(beta, jnp.float32) * (pi - ref)


def _target_or_one(target: jax.Array | None, batch_shape: tuple[int, ...]) -> jax.Array:
  if target is None:
    return jnp.ones(batch_shape, jnp.float32)
  return jnp.asarray(target, jnp.float32)


def dpo_loss(policy_logps: jax.Array, reference_logps: jax.Array, *,
             beta: float | jax.Array, target: jax.Array | None = None) -> jax.Array:
  """Mean DPO loss: Bradley-Terry cross-entropy on implicit-reward margins.

  ``h = beta * ((pi_0 - ref_0) - (pi_1 - ref_1))`` and
  ``loss = -(t log sigmoid(h) + (1 - t) log sigmoid(-h))``. With ``t = 1`` this is
  the DPO loss; with ``t = 1 - eps`` it is conservative DPO (label smoothing
  ``eps``), the natural loss for soft AI-feedback labels.

  Rafailov et al. 2023, Eq. 7; conservative DPO: Mitchell 2023, "A note on DPO
  with noisy preferences".

  Args:
    policy_logps: [B, 2] summed sequence log-probs under the policy.
    reference_logps: [B, 2] the same under the frozen reference.
    beta: KL-regularisation strength (> 0).
    target: [B] probability that response 0 is preferred; None means 1.

  Returns:
    Scalar float32 mean loss.
  """
  r = implicit_rewards(policy_logps, reference_logps, beta=beta)
  t = _target_or_one(target, r.shape[:-1])
  return jnp.mean(soft_bt_cross_entropy(r[..., 0] - r[..., 1], t))


def dpo_metrics(policy_logps: jax.Array, reference_logps: jax.Array, *,
                beta: float | jax.Array,
                target: jax.Array | None = None) -> dict[str, jax.Array]:
  """Implicit-reward diagnostics of DPO (slash-named, as in tunix's DPO trainer).

  Pairs are oriented by their majority label: chosen = response 0 when
  ``target >= 0.5`` (so ties keep the given order for the reward means) and
  response 1 otherwise. Accuracy excludes ties (``target == 0.5``).

  Args:
    policy_logps: [B, 2] summed sequence log-probs under the policy.
    reference_logps: [B, 2] the same under the frozen reference.
    beta: KL-regularisation strength.
    target: [B] probability that response 0 is preferred; None means 1.

  Returns:
    Dict of float32 scalars ``rewards/chosen``, ``rewards/rejected`` (mean
    implicit rewards), ``rewards/margin`` (mean chosen - rejected) and
    ``rewards/accuracy`` (fraction of non-tie pairs with chosen > rejected).
  """
  r = implicit_rewards(policy_logps, reference_logps, beta=beta)
  t = _target_or_one(target, r.shape[:-1])
  first = t >= 0.5
  chosen = jnp.where(first, r[..., 0], r[..., 1])
  rejected = jnp.where(first, r[..., 1], r[..., 0])
  decided = (t != 0.5).astype(jnp.float32)
  correct = decided * (chosen > rejected)
  return {
      "rewards/chosen": jnp.mean(chosen),
      "rewards/rejected": jnp.mean(rejected),
      "rewards/margin": jnp.mean(chosen - rejected),
      "rewards/accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(decided), 1.0),
  }
