"""Language-model losses: per-token log-probabilities and masked cross-entropy."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
  """log p(target) under ``logits``, in float32.

  Args:
    logits_btv: [b, t, v] logits (any float dtype).
    targets_bt: [b, t] int token ids.

  Returns:
    [b, t] float32 log-probabilities.
  """
  logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_bt[..., None].astype(jnp.int32), axis=-1)[..., 0]


def masked_lm_loss(logits_btv: jax.Array, targets_bt: jax.Array,
                   weights_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean next-token cross-entropy over the tokens where ``weights`` > 0.

  Args:
    logits_btv: [b, t, v] logits predicting ``targets``.
    targets_bt: [b, t] int token ids.
    weights_bt: [b, t] loss weights (1 on trained tokens, e.g. assistant turns).

  Returns:
    (loss scalar float32, number of weighted tokens float32). The loss is 0 when
    no token is weighted.
  """
  w = weights_bt.astype(jnp.float32)
  nll = -token_logprobs(logits_btv, targets_bt) * w
  n = jnp.sum(w)
  return jnp.sum(nll) / jnp.maximum(n, 1.0), n
