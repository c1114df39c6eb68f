"""The feedback model: answers the paper's multiple-choice comparison by the
log-probabilities of its option tokens (Bai et al. 2022, Sec. 4.1).

``FeedbackModel.p_option_a(prompts)`` gives P("(A)") = softmax over the log-probs of the
tokens "(A)" and "(B)" at the answer slot of each ``constitution.comparison_prompt``
(``sampling.candidate_logprobs``: only the answer position goes through the LM head).
With ``chain_of_thought`` the model first writes its reasoning after "Let's think
step-by-step:" and is scored after "Therefore the answer is:" (``cot_answer_prompt``).
Used by the labeling program and by the toy world's judge-skill evaluation alike.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cai_jax import constitution as cc
from cai_jax import judge
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.sampling import Sampler, call_seed, candidate_logprobs


class FeedbackModel:
  """A judge: a sampler (the feedback model) plus its tokenizer.

  Args:
    sampler: the feedback model.
    tokenizer: its tokenizer; the option labels must be single tokens.
    batch_size: comparison prompts per forward (and per reasoning batch).
    chain_of_thought: write a reasoning before the answer slot.
    cot_max_new_tokens, cot_temperature: sampling of the reasoning.
  """

  def __init__(self, sampler: Sampler, tokenizer: Tokenizer, *, batch_size: int,
               chain_of_thought: bool = False, cot_max_new_tokens: int = 96,
               cot_temperature: float = 0.0):
    self.sampler, self.tokenizer, self.batch_size = sampler, tokenizer, batch_size
    self.chain_of_thought = chain_of_thought
    self._cot_kw = dict(max_new_tokens=cot_max_new_tokens, temperature=cot_temperature,
                        stop_tokens=[tokenizer.eos_id])
    self.option_ids = (tokenizer.single_token_id(cc.OPTION_A),
                       tokenizer.single_token_id(cc.OPTION_B))

  def reasoning(self, prompts: Sequence[cc.Prompt], seed: int) -> list[str]:
    """The chain of thought written after each (CoT) comparison prompt."""
    out = []
    for i in range(0, len(prompts), self.batch_size):
      chunk = [p.token_ids(self.tokenizer) for p in prompts[i:i + self.batch_size]]
      res = self.sampler.generate(chunk, seed=call_seed(seed, "cot", i), **self._cot_kw)
      out += [cc.trim_reasoning(self.tokenizer.decode_generated(t)) for t in res.tokens]
    return out

  def option_logprobs(self, prompts: Sequence[cc.Prompt]) -> np.ndarray:
    """[n, 2] log-probs of "(A)" and "(B)" right after each prompt."""
    lp = []
    for i in range(0, len(prompts), self.batch_size):
      seqs = [p.token_ids(self.tokenizer) for p in prompts[i:i + self.batch_size]]
      lp.append(candidate_logprobs(self.sampler, seqs, list(self.option_ids)))
    return np.concatenate(lp) if lp else np.zeros((0, 2), np.float32)

  def p_option_a(self, prompts: Sequence[cc.Prompt], seed: int = 0
                 ) -> tuple[np.ndarray, list[str]]:
    """P("(A)") per comparison prompt, and the reasoning written first ("" without CoT).

    ``seed`` keys the reasoning's sampling (it is greedy by default).
    """
    reasoning = [""] * len(prompts)
    if self.chain_of_thought and prompts:
      reasoning = self.reasoning(prompts, seed)
      prompts = [cc.cot_answer_prompt(p, r) for p, r in zip(prompts, reasoning)]
    lp = self.option_logprobs(prompts)
    return np.asarray(judge.preference_probability(lp[:, 0], lp[:, 1])), reasoning
