"""A trained preference model as a reward: scores (request, answer) pairs.

An answer is encoded exactly as the preference model saw its training pairs
(``data.loaders.encode_response``: the request's turns, then the answer as an Assistant
turn) and scored at its end-of-turn token (``models.scores.response_scores``). PPO's
rollouts, its probes and the evaluators all score through ``RewardModel``.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from cai_jax.data import packing
from cai_jax.data.dialogue import Turn
from cai_jax.data.loaders import encode_response
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.scores import response_scores
from cai_jax.models.store import SavedModel
from cai_jax.sampling import buckets
from cai_jax.sharding import batch_putter
from cai_jax.sharding.processes import fetch

Request = Sequence[Turn]


class RewardModel:
  """A scalar-head model with its tokenizer and a batch size.

  Args:
    graphdef, params: the preference model.
    tokenizer: its tokenizer.
    mesh: place batches on this mesh (None: the default device).
    batch_size: answers per forward.
    max_len: cut longer encodings to this many tokens, from the left (the preference
      model program's ``seq_len``; ``packing.keep_end``); None: never cut.
  """

  def __init__(self, graphdef: nnx.GraphDef, params: Any, tokenizer: Tokenizer, *,
               mesh: Mesh | None = None, batch_size: int = 64, max_len: int | None = None):
    self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
    self.mesh, self.batch_size, self.max_len = mesh, batch_size, max_len
    self._put = batch_putter(mesh, batch_size) if mesh is not None else None
    self._score = jax.jit(lambda p, t, m: response_scores(graphdef, p, t, m))

  @classmethod
  def load(cls, model: SavedModel, *, mesh: Mesh | None = None,
           tokenizer: Tokenizer | None = None, **kw) -> RewardModel:
    """Loads a saved preference model (scalar head) onto ``mesh``."""
    model.require_kind("scalar", "the reward model")
    graphdef, params = model.load(mesh=mesh)
    return cls(graphdef, params, tokenizer or model.tokenizer(), mesh=mesh, **kw)

  def arrays(self, requests: Sequence[Request], answers: Sequence[str],
             rows: int) -> dict[str, np.ndarray]:
    """The model's input for ``answers``: ``pm_tokens`` [rows, L] (right-padded, L a
    ``buckets.train_bucket``) and ``pm_mask`` (1 on each answer turn's tokens; the score
    is read at the last 1). Rows past ``len(answers)`` are padding."""
    encoded = []
    for req, ans in zip(requests, answers):
      ids, mask = encode_response(self.tokenizer, req, ans)
      if self.max_len is not None:
        ids, mask = packing.keep_end(np.asarray(ids), np.asarray(mask), self.max_len)
      encoded.append((ids, mask))
    length = buckets.train_bucket(max(len(ids) for ids, _ in encoded))
    tokens = np.full((rows, length), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((rows, length), np.float32)
    for i, (ids, m) in enumerate(encoded):
      tokens[i, :len(ids)] = ids
      mask[i, :len(m)] = m
    return {"pm_tokens": tokens, "pm_mask": mask}

  def score(self, requests: Sequence[Request], answers: Sequence[str]) -> np.ndarray:
    """[n] scores of ``answers`` to ``requests`` (float32)."""
    if len(requests) != len(answers):
      raise ValueError(f"{len(requests)} requests but {len(answers)} answers")
    out = []
    for i in range(0, len(answers), self.batch_size):
      chunk = answers[i:i + self.batch_size]
      arr = self.arrays(requests[i:i + self.batch_size], chunk, self.batch_size)
      if self._put is not None:
        arr = self._put(arr)
        with jax.set_mesh(self.mesh):
          s = self._score(self.params, arr["pm_tokens"], arr["pm_mask"])
      else:
        s = self._score(self.params, arr["pm_tokens"], arr["pm_mask"])
      out.append(np.asarray(fetch(s))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
