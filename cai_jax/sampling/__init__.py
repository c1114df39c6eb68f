"""Fast sampling: jitted prefill + while-loop decode with a KV cache, prefix reuse, scoring.

Public API:
  generate(model, prompts, *, max_new_tokens, temperature, top_k, top_p, seed,
           stop_tokens, num_samples, keep_state, cache_len, mesh) -> SampleOutput
  continue_generation(model, conversation, extra, *, max_new_tokens, ...) -> SampleOutput
  Sampler(graphdef, params, mesh=None): the same on a split model, plus
    start / extend / decode for finer control.
  candidate_logprobs(model, sequences, candidates, ...): judge option log-probs.
  sequence_logprobs(model, prompts, continuations, ...): summed continuation log-probs.
"""
from cai_jax.sampling.cache import DecodeState
from cai_jax.sampling.sampler import (Conversation, Sampler, SampleOutput, continue_generation,
                                      generate)
from cai_jax.sampling.select import Mode

__all__ = ["Conversation", "DecodeState", "Mode", "SampleOutput", "Sampler",
           "continue_generation", "generate"]
from cai_jax.sampling.scoring import SequenceScores, candidate_logprobs, sequence_logprobs

__all__ += ["SequenceScores", "candidate_logprobs", "sequence_logprobs"]
