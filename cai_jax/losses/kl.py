"""Per-token KL estimators, KL-penalised PPO rewards and KL-coefficient controllers.

The estimators take log-probabilities of tokens SAMPLED FROM THE POLICY, so
their mean over samples estimates KL(pi || pi_ref) (Schulman 2020, "Approximating
KL Divergence", http://joschu.net/blog/kl-approx.html):

* k1 = log pi - log pi_ref: unbiased, high variance, can be negative per token.
* k3 = exp(r) - 1 - r with r = log pi_ref - log pi: unbiased, low variance and
  >= 0 per token. ``exp`` overflows float32 for r > ~88 nats (a sampled token
  the policy gives probability < 1e-38), which never happens in practice.

The controllers are small frozen dataclasses (hyperparameters, hashable, so
usable as static jit arguments) acting on a ``KLControllerState`` pytree, so
the coefficient is checkpointed with the train state and updated inside jit.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k3")


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Per-token k1 estimate ``logp - ref_logp`` of KL(pi || pi_ref).

  Args:
    logp: [...] log-probs of sampled tokens under the policy.
    ref_logp: [...] the same tokens under the reference.

  Returns:
    [...] float32 estimates.
  """
  return jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Per-token k3 estimate ``exp(r) - 1 - r``, ``r = ref_logp - logp``; always >= 0.

  Computed as ``expm1(r) - r`` for accuracy near r = 0.

  Args:
    logp: [...] log-probs of sampled tokens under the policy.
    ref_logp: [...] the same tokens under the reference.

  Returns:
    [...] float32 estimates.
  """
  r = jnp.asarray(ref_logp, jnp.float32) - jnp.asarray(logp, jnp.float32)
  return jnp.expm1(r) - r


def _estimator(name: str):
  if name == "k1":
    return kl_k1
  if name == "k3":
    return kl_k3
  raise ValueError(f"unknown KL estimator {name!r}; expected one of {KL_ESTIMATORS}")


def last_valid_index(mask: jax.Array) -> jax.Array:
  """Index of the last position with ``mask`` > 0 in each row (-1 if none).

  Args:
    mask: [B, T] 1 on valid tokens.

  Returns:
    [B] int32 indices.
  """
  valid = jnp.asarray(mask) > 0
  t = valid.shape[-1]
  pos = jnp.where(valid, jnp.arange(t, dtype=jnp.int32), -1)
  return jnp.max(pos, axis=-1)


def kl_penalized_rewards(score: jax.Array, logp: jax.Array, ref_logp: jax.Array,
                         mask: jax.Array, *, beta: float | jax.Array,
                         estimator: str = "k1") -> jax.Array:
  """Per-token PPO rewards: ``-beta * KL_t`` on every valid token, plus the PM score
  at the last valid token.

  Summed over a row this is ``score - beta * sum_t KL_t``, the per-sample value of
  the KL-regularised objective ``E[r(x, y)] - beta * KL(pi || pi_ref)``. Masked
  tokens get reward 0; a row with no valid token gets all zeros (its score is
  dropped).

  Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
  Eq. 2; Stiennon et al. 2020; used by Bai et al. 2022 (RL-CAI).

  Args:
    score: [B] scalar reward (preference-model score) per response.
    logp: [B, T] log-probs of the sampled response tokens under the policy.
    ref_logp: [B, T] the same under the reference (SL-CAI) policy.
    mask: [B, T] 1 on response tokens.
    beta: KL coefficient (float or traced scalar from a controller state).
    estimator: "k1" or "k3".

  Returns:
    [B, T] float32 rewards.
  """
  kl = _estimator(estimator)(logp, ref_logp)
  valid = jnp.asarray(mask) > 0
  rewards = jnp.where(valid, -jnp.asarray(beta, jnp.float32) * kl, 0.0)
  last = last_valid_index(mask)
  at_last = jnp.arange(valid.shape[-1])[None, :] == last[:, None]
  return rewards + jnp.where(at_last, jnp.asarray(score, jnp.float32)[:, None], 0.0)


class KLControllerState(NamedTuple):
  """Checkpointable state of a KL controller: the current coefficient (scalar)."""
  beta: jax.Array


@dataclasses.dataclass(frozen=True)
class FixedKLController:
  """Constant KL coefficient.

  Attributes:
    beta: the coefficient.
  """
  beta: float

  def init(self) -> KLControllerState:
    """Returns the state holding ``beta`` as a float32 scalar."""
    return KLControllerState(beta=jnp.asarray(self.beta, jnp.float32))

  def update(self, state: KLControllerState, kl: jax.Array,
             n_steps: int | jax.Array) -> KLControllerState:
    """Returns ``state`` unchanged (same signature as the adaptive controller)."""
    del kl, n_steps
    return state


@dataclasses.dataclass(frozen=True)
class AdaptiveKLController:
  """Proportional controller steering the measured KL toward ``target``.

  ``error = clip(kl / target - 1, -0.2, 0.2)``;
  ``beta <- beta * (1 + error * n_steps / horizon)``: beta grows when the KL is
  above target and shrinks when below, by at most 20% per ``horizon`` steps.

  Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
  Sec. 2.2.

  Attributes:
    init_beta: starting coefficient.
    target: target KL (nats per sequence, as measured by the caller).
    horizon: number of samples (steps) over which the error acts.
  """
  init_beta: float
  target: float
  horizon: float

  def __post_init__(self):
    if self.target <= 0 or self.horizon <= 0:
      raise ValueError(f"target and horizon must be > 0, got {self.target}, {self.horizon}")

  def init(self) -> KLControllerState:
    """Returns the state holding ``init_beta`` as a float32 scalar."""
    return KLControllerState(beta=jnp.asarray(self.init_beta, jnp.float32))

  def update(self, state: KLControllerState, kl: jax.Array,
             n_steps: int | jax.Array) -> KLControllerState:
    """One controller step.

    Args:
      state: current state.
      kl: scalar measured KL of the last batch.
      n_steps: number of samples the measurement covers (e.g. batch size).

    Returns:
      The new state.
    """
    error = jnp.clip(jnp.asarray(kl, jnp.float32) / self.target - 1.0, -0.2, 0.2)
    mult = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / self.horizon
    return KLControllerState(beta=state.beta * mult)
