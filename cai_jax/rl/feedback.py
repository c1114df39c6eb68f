"""The feedback model: answers the paper's multiple-choice comparison by the
log-probabilities of its option tokens (Bai et al. 2022, Sec. 4.1).

``FeedbackModel.p_option_a(prompts)`` gives P("(A)") = softmax over the log-probs of the
options "(A)" and "(B)" at the answer slot of each ``constitution.comparison_prompt``.
An option is scored by the log-probability of its whole token sequence as it continues
the prompt (real BPE vocabularies split "(A)" into "(", "A", ")"): the tokens are the
difference between the prompt's encoding and the encoding of the prompt with " (A)"
appended, so they are exactly what the model would write there. When every option is
one token (the toy world's sentencepiece vocabulary) the fast path scores them as
candidate next tokens (``sampling.candidate_logprobs``: only the answer position goes
through the LM head); otherwise each prompt is prefilled once and both options continue
its cache (``sampling.option_logprobs``). The feedback model may have its own tokenizer.
With ``chain_of_thought`` the model first writes its reasoning after "Let's think
step-by-step:" and is scored after "Therefore the answer is:" (``cot_answer_prompt``).
The answer prompt is scored on the reasoning's own KV cache: it is the comparison prompt,
the (trimmed) reasoning and the answer cue, so it shares its first tokens with what the
model sampled; the cache is cut back to that shared prefix and only the rest is appended
(``sampling.continued_option_logprobs``). Rows where that does not pay or cannot hold
(a truncated prompt, a re-tokenization that parts early, the length limit) are prefilled
again as before; ``FeedbackModel.cot_counts`` counts both.
Used by the labeling program and by the toy world's judge-skill evaluation alike.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from cai_jax import constitution as cc
from cai_jax import judge
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.sampling import (Sampler, call_seed, candidate_logprobs, continued_option_logprobs,
                              option_logprobs)

_log = logging.getLogger(__name__)


def option_tokens(prompt: cc.Prompt, tokenizer: Tokenizer, option: str
                  ) -> tuple[list[int], list[int]]:
  """(prompt ids, the ids of `` option`` as they continue the prompt).

  Raises:
    ValueError: if appending the option changes the prompt's own tokens (the option
      would not be a continuation of what the model saw).
  """
  ids = prompt.token_ids(tokenizer)
  prefix = f"{prompt.prefix} {option}" if prompt.prefix else option
  full = cc.Prompt(prompt.turns, prompt.open_role, prefix,
                   prompt.num_exemplar_turns).token_ids(tokenizer)
  if full[:len(ids)] != ids or len(full) == len(ids):
    raise ValueError(f"appending {option!r} re-tokenizes the end of the judge prompt "
                     f"({ids[-3:]} -> {full[len(ids) - 3:]}); the option cannot be scored "
                     "as its continuation")
  return ids, full[len(ids):]


class FeedbackModel:
  """A judge: a sampler (the feedback model) plus its tokenizer.

  Args:
    sampler: the feedback model.
    tokenizer: its tokenizer (options of several tokens are scored as sequences).
    batch_size: comparison prompts per forward (and per reasoning batch).
    chain_of_thought: write a reasoning before the answer slot.
    cot_max_new_tokens, cot_temperature: sampling of the reasoning.
    cot_cache: score the answer prompts on the reasoning's cache (False: prefill each
      answer prompt again, the reference path; same numbers up to float rounding).

  Attributes:
    cot_counts: cumulative ``{"answers", "reprefilled"}``: chain-of-thought answer prompts
      scored, and how many of them were prefilled again rather than continued.
  """

  def __init__(self, sampler: Sampler, tokenizer: Tokenizer, *, batch_size: int,
               chain_of_thought: bool = False, cot_max_new_tokens: int = 96,
               cot_temperature: float = 0.0, cot_cache: bool = True):
    self.sampler, self.tokenizer, self.batch_size = sampler, tokenizer, batch_size
    self.chain_of_thought = chain_of_thought
    self.cot_cache = cot_cache
    self.cot_counts = {"answers": 0, "reprefilled": 0}
    self._cot_kw = dict(max_new_tokens=cot_max_new_tokens, temperature=cot_temperature,
                        stop_tokens=tokenizer.stop_ids)

  def _reason(self, prompts: Sequence[cc.Prompt], seed: int, keep_state: bool):
    """Yields (first index, sampler output, trimmed reasoning texts) batch by batch."""
    for i in range(0, len(prompts), self.batch_size):
      chunk = [p.token_ids(self.tokenizer) for p in prompts[i:i + self.batch_size]]
      res = self.sampler.generate(chunk, seed=call_seed(seed, "cot", i),
                                  keep_state=keep_state, **self._cot_kw)
      yield i, res, [cc.trim_reasoning(self.tokenizer.decode_generated(t))
                     for t in res.tokens]

  def reasoning(self, prompts: Sequence[cc.Prompt], seed: int) -> list[str]:
    """The chain of thought written after each (CoT) comparison prompt."""
    return [r for _, _, texts in self._reason(prompts, seed, False) for r in texts]

  def option_logprobs(self, prompts: Sequence[cc.Prompt]) -> np.ndarray:
    """[n, 2] log-probs of the "(A)" and "(B)" token sequences right after each prompt.

    Prompts are scored in batches of similar length (a batch pads to its longest prompt's
    length bucket); the result is in the given order.
    """
    rows = [[option_tokens(p, self.tokenizer, o) for o in cc.OPTIONS] for p in prompts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0][0]))
    out = np.zeros((len(rows), 2), np.float32)
    for i in range(0, len(order), self.batch_size):
      idx = order[i:i + self.batch_size]
      out[idx] = self._score([rows[j] for j in idx])
    return out

  def _score(self, rows: list[list[tuple[list[int], list[int]]]]) -> np.ndarray:
    """[n, 2] log-probs of each row's two (prompt, option ids) continuations."""
    if all(len(opt) == 1 for row in rows for _, opt in row):   # fast path: next tokens
      return candidate_logprobs(self.sampler, [row[0][0] for row in rows],
                                [[opt[0] for _, opt in row] for row in rows])
    return option_logprobs(self.sampler, [row[0][0] for row in rows],
                           [[opt for _, opt in row] for row in rows])

  def p_option_a(self, prompts: Sequence[cc.Prompt], seed: int = 0
                 ) -> tuple[np.ndarray, list[str]]:
    """P("(A)") per comparison prompt, and the reasoning written first ("" without CoT).

    ``seed`` keys the reasoning's sampling (it is greedy by default).
    """
    reasoning = [""] * len(prompts)
    if not (self.chain_of_thought and prompts):
      lp = self.option_logprobs(prompts)
    elif self.cot_cache:
      lp, reasoning = self._cot_option_logprobs(prompts, seed)
    else:
      reasoning = self.reasoning(prompts, seed)
      lp = self.option_logprobs([cc.cot_answer_prompt(p, r)
                                 for p, r in zip(prompts, reasoning)])
      self.cot_counts["answers"] += len(prompts)
      self.cot_counts["reprefilled"] += len(prompts)
    return np.asarray(judge.preference_probability(lp[:, 0], lp[:, 1])), reasoning

  def _cot_option_logprobs(self, prompts: Sequence[cc.Prompt], seed: int
                           ) -> tuple[np.ndarray, list[str]]:
    """Reasoning (as ``reasoning``, batch by batch) and the [n, 2] option log-probs after
    each ``cot_answer_prompt``, scored on the reasoning's cache where it pays
    (``continued_option_logprobs``); the other rows go through ``option_logprobs``."""
    tok = self.tokenizer
    out = np.zeros((len(prompts), 2), np.float32)
    reasoning, answers, again = [], [], []
    for i, res, texts in self._reason(prompts, seed, True):
      asked = [cc.cot_answer_prompt(p, r) for p, r in zip(prompts[i:i + len(texts)], texts)]
      rows = [[option_tokens(a, tok, o) for o in cc.OPTIONS] for a in asked]
      lp, used = continued_option_logprobs(self.sampler, res.conversation,
                                           [row[0][0] for row in rows],
                                           [[opt for _, opt in row] for row in rows])
      out[i + np.flatnonzero(used)] = lp[used]
      again += [i + j for j in np.flatnonzero(~used)]
      reasoning += texts
      answers += asked
    if again:
      out[again] = self.option_logprobs([answers[j] for j in again])
    self.cot_counts["answers"] += len(prompts)
    self.cot_counts["reprefilled"] += len(again)
    _log.debug("chain-of-thought answers: %d of %d prefilled again", len(again), len(prompts))
    return out, reasoning
