"""PPO pieces over per-token arrays: GAE, whitening, clipped policy and value losses.

All arrays are ``[B, T]`` over response tokens, with ``mask`` 1 on real
(generated) tokens and 0 on padding. Masked tokens are skipped everywhere: they
get zero advantage/return/loss and do not enter means or statistics. Means are
token-level (sum over all valid tokens of the batch / number of valid tokens).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# |log pi_new - log pi_old| is clipped here before exp (as verl does): the loss is
# held constant beyond it (zero gradient), so exp never overflows and gradients
# stay finite for any inputs. A ratio of e^20 never occurs in a sane PPO update.
_MAX_LOG_RATIO = 20.0


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``x`` over entries where ``mask`` > 0 (0 when the mask is empty).

  Args:
    x: [...] values.
    mask: [...] same shape, 1 on valid entries (non-finite values under a 0
      mask are ignored).

  Returns:
    Scalar float32.
  """
  valid = jnp.asarray(mask) > 0
  total = jnp.sum(jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0))
  return total / jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, *,
        gamma: float, lam: float,
        bootstrap: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over masked token sequences.

  Scanning backwards over VALID tokens only (masked tokens are skipped as if
  absent, so left/right padding and holes are all handled):
  ``delta_t = r_t + gamma * V_next - V_t`` and
  ``A_t = delta_t + gamma * lam * A_next``, where ``V_next``/``A_next`` belong to
  the next valid token. After the last valid token the episode ends:
  ``V_next = bootstrap`` (default 0, i.e. terminal: the response is complete)
  and ``A_next = 0``. Values stored at masked positions are never read.

  Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
  Advantage Estimation", Eq. 16.

  Args:
    rewards: [B, T] per-token rewards (e.g. ``kl_penalized_rewards``).
    values: [B, T] value estimates V(s_t).
    mask: [B, T] 1 on valid tokens, 0 on padding.
    gamma: discount factor.
    lam: GAE lambda.
    bootstrap: optional [B] value after the last valid token (for truncated,
      not terminated, sequences); None means 0.

  Returns:
    (advantages [B, T], returns [B, T]) float32, with returns = advantages +
    values; both are 0 at masked positions.
  """
  r = jnp.asarray(rewards, jnp.float32)
  v = jnp.asarray(values, jnp.float32)
  m = jnp.asarray(mask, jnp.float32)
  batch = r.shape[0]
  v_last = (jnp.zeros((batch,), jnp.float32) if bootstrap is None
            else jnp.asarray(bootstrap, jnp.float32))

  def step(carry, xs):
    next_value, next_adv = carry
    r_t, v_t, m_t = xs
    delta = r_t + gamma * next_value - v_t
    adv = delta + gamma * lam * next_adv
    valid = m_t > 0
    carry = (jnp.where(valid, v_t, next_value), jnp.where(valid, adv, next_adv))
    return carry, jnp.where(valid, adv, 0.0)

  init = (v_last, jnp.zeros((batch,), jnp.float32))
  _, adv_tb = jax.lax.scan(step, init, (r.T, v.T, m.T), reverse=True)
  adv = adv_tb.T
  returns = jnp.where(m > 0, adv + v, 0.0)
  return adv, returns


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True,
           eps: float = 1e-8) -> jax.Array:
  """Normalises ``x`` to mean 0, std 1 over the masked entries of the batch.

  Statistics use the population variance (ddof = 0) over valid entries. With
  ``shift_mean=False`` the mean is added back (only the scale changes), as in
  TRL/Ziegler et al. 2019 reward whitening. Masked entries are returned as 0.

  Args:
    x: [B, T] values (typically advantages).
    mask: [B, T] 1 on valid entries.
    shift_mean: whether the result is centred.
    eps: added to the variance.

  Returns:
    [B, T] float32 whitened values.
  """
  valid = jnp.asarray(mask) > 0
  xf = jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0)
  mean = masked_mean(xf, valid)
  var = masked_mean(jnp.square(xf - mean), valid)
  out = (xf - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return jnp.where(valid, out, 0.0)


def policy_loss(logp_new: jax.Array, logp_old: jax.Array, advantages: jax.Array,
                mask: jax.Array, *, clip_eps: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped surrogate loss (to minimise).

  ``ratio = exp(logp_new - logp_old)``; per token
  ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``, masked token mean.
  The advantages are treated as constants (stop-gradient). The log-ratio is
  clipped to +-20 before exp so extreme inputs give finite losses and gradients.

  Schulman et al. 2017, "Proximal Policy Optimization Algorithms", Eq. 7.

  Args:
    logp_new: [B, T] log-probs of the sampled tokens under the current policy.
    logp_old: [B, T] the same under the policy that sampled them.
    advantages: [B, T] (usually whitened) advantages.
    mask: [B, T] 1 on valid tokens.
    clip_eps: clip range epsilon (e.g. 0.2).

  Returns:
    (loss scalar, metrics) with float32 scalar metrics
    ``policy/clipfrac`` (fraction of valid tokens where the clipped term is the
    active, larger one), ``policy/approx_kl`` (mean of ``(ratio - 1) - log ratio``,
    Schulman's k3 estimate of KL(old || new)) and ``policy/ratio`` (mean ratio).
  """
  valid = jnp.asarray(mask) > 0
  # Zero padded entries BEFORE exp so garbage there cannot poison gradients, and
  # bound |log ratio| so exp cannot overflow (a no-op for any sane update).
  log_ratio = jnp.where(valid, jnp.asarray(logp_new, jnp.float32)
                        - jnp.asarray(logp_old, jnp.float32), 0.0)
  log_ratio = jnp.clip(log_ratio, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
  ratio = jnp.exp(log_ratio)
  adv = jax.lax.stop_gradient(jnp.where(valid, jnp.asarray(advantages, jnp.float32), 0.0))
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  lr = jax.lax.stop_gradient(log_ratio)
  metrics = {
      "policy/clipfrac": masked_mean(clipped > unclipped, mask),
      "policy/approx_kl": masked_mean(jnp.expm1(lr) - lr, mask),
      "policy/ratio": masked_mean(jnp.exp(lr), mask),
  }
  return loss, metrics


def value_loss(values_new: jax.Array, values_old: jax.Array, returns: jax.Array,
               mask: jax.Array, *, clip_eps: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)`` (masked mean).

  ``V_clip = V_old + clip(V - V_old, -eps, eps)``. Returns are constants.

  Schulman et al. 2017 (PPO2 baselines implementation); Ziegler et al. 2019.

  Args:
    values_new: [B, T] current value predictions.
    values_old: [B, T] value predictions at rollout time.
    returns: [B, T] GAE returns (targets).
    mask: [B, T] 1 on valid tokens.
    clip_eps: value clip range (in value units).

  Returns:
    (loss scalar, metrics) with float32 scalar metrics ``value/clipfrac``
    (fraction of valid tokens where the clipped error is strictly larger) and
    ``value/error`` (mean unclipped squared error).
  """
  valid = jnp.asarray(mask) > 0
  v = jnp.where(valid, jnp.asarray(values_new, jnp.float32), 0.0)
  v_old = jnp.where(valid, jnp.asarray(values_old, jnp.float32), 0.0)
  ret = jax.lax.stop_gradient(jnp.where(valid, jnp.asarray(returns, jnp.float32), 0.0))
  v_clip = v_old + jnp.clip(v - v_old, -clip_eps, clip_eps)
  err = jnp.square(v - ret)
  err_clip = jnp.square(v_clip - ret)
  loss = 0.5 * masked_mean(jnp.maximum(err, err_clip), mask)
  metrics = {
      "value/clipfrac": masked_mean(err_clip > err, mask),
      "value/error": masked_mean(err, mask),
  }
  return loss, metrics
