"""Losses of a harm classifier read from a scalar head: one logit per token.

A classifier row is a right-padded ``[b, t]`` token row with a 0/1 ``mask`` on the
positions whose score is trained (an input classifier: the prompt's last token; an output
or exchange classifier: every token of the response, because it is read while the
response streams) and a label per row (1 harmful, 0 harmless; soft labels in [0, 1] work
the same). The score at position ``t`` is ``sigmoid(value_t)``.

``classifier_loss`` mixes two binary cross-entropies, each the mean over a row's masked
positions and then over rows (a long response weighs as much as a short one):

* per token: ``BCE(sigmoid(v_t), y)``;
* running maximum: ``BCE(max_{s <= t} sigmoid(v_s), y)`` over the masked positions
  ``s``: a streaming guard stops a response once *any* prefix scores above its threshold,
  so this is the quantity the guard acts on. On a harmless row it punishes the highest
  score so far; on a harmful row it is satisfied once some prefix scores high, so the
  harmless start of a harmful answer need not be flagged.

``cummax_weight`` (0..1) is the share of the second term (0: per token only).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-6


def _bce_prob(p: jax.Array, y: jax.Array) -> jax.Array:
  p = jnp.clip(p, _EPS, 1.0 - _EPS)
  return -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))


def _bce_logit(v: jax.Array, y: jax.Array) -> jax.Array:
  # log(1 + e^v) - y v, stable for large |v|
  return jax.nn.softplus(v) - y * v


def running_max_scores(values_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """``max_{s <= t, mask_s} sigmoid(v_s)`` at every position (0 before the first masked
  position): what a streaming guard has seen by token ``t``."""
  p = jnp.where(mask_bt > 0, jax.nn.sigmoid(values_bt.astype(jnp.float32)), 0.0)
  return jax.lax.cummax(p, axis=1)


def _row_mean(x_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  m = (mask_bt > 0).astype(jnp.float32)
  return jnp.sum(x_bt * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def classifier_loss(values_bt: jax.Array, mask_bt: jax.Array, labels_b: jax.Array, *,
                    cummax_weight: float = 0.0) -> jax.Array:
  """The mixed binary cross-entropy of the module docstring (a scalar)."""
  v = values_bt.astype(jnp.float32)
  y = labels_b.astype(jnp.float32)[:, None]
  per_token = jnp.mean(_row_mean(_bce_logit(v, y), mask_bt))
  if cummax_weight == 0.0:
    return per_token
  running = jnp.mean(_row_mean(_bce_prob(running_max_scores(v, mask_bt), y), mask_bt))
  return (1.0 - cummax_weight) * per_token + cummax_weight * running


def final_scores(values_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """Each row's score at its last masked position -> [b] (the whole input or response)."""
  t = mask_bt.shape[1]
  last = jnp.maximum(jnp.max(jnp.where(mask_bt > 0, jnp.arange(t)[None], -1), axis=1), 0)
  v = jnp.take_along_axis(values_bt.astype(jnp.float32), last[:, None], axis=1)[:, 0]
  return jax.nn.sigmoid(v)


def classifier_metrics(values_bt: jax.Array, mask_bt: jax.Array, labels_b: jax.Array,
                       threshold: float = 0.5) -> dict[str, jax.Array]:
  """Accuracy of the final score and of the streaming decision (running maximum at the
  last position) at ``threshold``, and the streaming decision's flag rates on harmful
  (recall) and harmless (false-flag rate) rows. A rate over rows of one kind is nan when
  the batch holds none."""
  y = labels_b.astype(jnp.float32) >= 0.5
  final = final_scores(values_bt, mask_bt) >= threshold
  stream = jnp.max(running_max_scores(values_bt, mask_bt), axis=1) >= threshold
  pos, neg, flagged = (y.astype(jnp.float32), (~y).astype(jnp.float32),
                       stream.astype(jnp.float32))
  return {"accuracy": jnp.mean((final == y).astype(jnp.float32)),
          "streaming_accuracy": jnp.mean((stream == y).astype(jnp.float32)),
          "recall": jnp.sum(flagged * pos) / jnp.sum(pos),
          "false_flag_rate": jnp.sum(flagged * neg) / jnp.sum(neg)}
