"""Generated text: sample continuations of prompts and decode them (the one decode path)."""
from __future__ import annotations

from typing import Any, Sequence

from cai_jax.sampling.sampler import Sampler


def generate_texts(sampler: Sampler, tokenizer: Any, prompts: Sequence[Sequence[int]], *,
                   batch_size: int, max_new_tokens: int, **kw) -> list[str]:
  """Each prompt's continuation as text, cut at the end of turn
  (``tokenizer.decode_generated``), in sampler calls of ``batch_size`` prompts.

  Args:
    sampler: the model.
    tokenizer: a ``cai_jax.data.tokenizer.Tokenizer``; its ``stop_ids`` end a turn.
    prompts: ragged token-id lists.
    batch_size, max_new_tokens: per call.
    **kw: more ``Sampler.generate`` arguments (default: greedy, seed 0).
  """
  out = []
  for i in range(0, len(prompts), batch_size):
    res = sampler.generate(prompts[i:i + batch_size], max_new_tokens=max_new_tokens,
                           stop_tokens=tokenizer.stop_ids, **kw)
    out += [tokenizer.decode_generated(t) for t in res.tokens]
  return out
