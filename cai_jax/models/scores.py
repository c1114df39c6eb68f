"""Full-forward response scores: summed log-probs under an LM, rewards under a scalar head.

A response is marked by a 0/1 mask over a right-padded ``[b, t]`` token row (the prompt's
tokens 0, the response's body and end-of-turn token 1). Every program that scores
responses (the preference model, DPO, PPO, the evaluators) goes through these functions;
the pair versions keep the explicit pair axis ``[b, 2, t]`` (index 0 = first response).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cai_jax.losses.lm import token_logprobs
from cai_jax.models.api import merge
from cai_jax.models.transformer import last_token_values


def flatten_pairs(x: jax.Array) -> jax.Array:
  """[B, 2, ...] -> [2B, ...] (row 2i is pair i's first response, 2i + 1 its second).

  Only for a model forward; results go back through ``unflatten_pairs`` at once.
  """
  return x.reshape((x.shape[0] * 2,) + x.shape[2:])


def unflatten_pairs(x: jax.Array) -> jax.Array:
  """[2B, ...] -> [B, 2, ...], the inverse of ``flatten_pairs``."""
  return x.reshape((x.shape[0] // 2, 2) + x.shape[1:])


def response_logprobs(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array,
                      mask: jax.Array) -> jax.Array:
  """Summed log-probs [b] of the masked tokens under an LM.

  Args:
    graphdef, params: an LM.
    tokens: [b, t] int32 rows (prompt + response, right-padded).
    mask: [b, t], 1 on the response tokens whose log-probs are summed (token 0, which
      nothing predicts, never counts).
  """
  logits = merge(graphdef, params)(tokens[:, :-1])
  logp = token_logprobs(logits, tokens[:, 1:])  # [b, t-1]
  return jnp.sum(logp * mask[:, 1:].astype(jnp.float32), axis=-1)


def response_scores(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array,
                    mask: jax.Array) -> jax.Array:
  """Scalar-head values [b] read at each row's last masked token (a response's
  end-of-turn token: where a preference model is trained to score it).

  Args:
    graphdef, params: a scalar-head model.
    tokens: [b, t] int32 rows (prompt + response, right-padded).
    mask: [b, t], 1 on the response's tokens.
  """
  values = merge(graphdef, params)(tokens)  # [b, t]
  return last_token_values(values, mask > 0)


def pair_logprobs(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array,
                  mask: jax.Array) -> jax.Array:
  """``response_logprobs`` of both responses of each pair: [B, 2, L] -> [B, 2]."""
  return unflatten_pairs(response_logprobs(graphdef, params, flatten_pairs(tokens),
                                           flatten_pairs(mask)))


def pair_rewards(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array,
                 mask: jax.Array) -> jax.Array:
  """``response_scores`` of both responses of each pair: [B, 2, L] -> [B, 2]."""
  return unflatten_pairs(response_scores(graphdef, params, flatten_pairs(tokens),
                                         flatten_pairs(mask)))
