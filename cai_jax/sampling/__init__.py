"""Fast sampling: jitted prefill + while-loop decode with a KV cache, prefix reuse, scoring.

Public API:
  generate(model, prompts, *, max_new_tokens, temperature, top_k, top_p, seed,
           stop_tokens, num_samples, keep_state, cache_len, mesh) -> SampleOutput
  continue_generation(model, conversation, extra, *, max_new_tokens, ...) -> SampleOutput
  Sampler(graphdef, params, mesh=None): the same on a split model, plus
    start / extend / decode for finer control.
  candidate_logprobs(model, sequences, candidates, ...): judge option log-probs.
  option_logprobs(model, prompts, options, ...): k short options per prompt, one prefill.
  continued_option_logprobs(sampler, conversation, sequences, options): the same options
    after sequences that continue a live conversation's rows (its cache is reused).
  sequence_logprobs(model, prompts, continuations, ...): summed continuation log-probs.
  generate_texts(sampler, tokenizer, prompts, ...): continuations decoded to text.
  run_jobs(sampler, jobs, *, batch_size, max_new_tokens, ...): continuous batching of
    generator jobs (``Request`` in, ``Reply`` back), e.g. multi-turn chains: a row that
    finishes a turn gets its job's next turn, or a new job, while the others decode.
  call_seed(*parts): a seed as a pure function of names.

Every call keeps rows within the model's ``max_seq_len`` (``limits``): over-long text
keeps its last tokens and rows stop at the limit (``Sampler.length_stats`` counts
both), or, with ``length_policy.overflow = 'error'`` (gin) / ``Sampler(overflow=
"error")``, the call raises first.
"""
from cai_jax.sampling.cache import DecodeState
from cai_jax.sampling.sampler import (Conversation, Sampler, SampleOutput, continue_generation,
                                      generate)
from cai_jax.sampling.seeds import call_seed
from cai_jax.sampling.select import Mode

__all__ = ["Conversation", "DecodeState", "Mode", "SampleOutput", "Sampler",
           "call_seed", "continue_generation", "generate"]
from cai_jax.sampling.scoring import (SequenceScores, candidate_logprobs,
                                     continued_option_logprobs, option_logprobs,
                                     sequence_logprobs)
from cai_jax.sampling.text import generate_texts
from cai_jax.sampling.continuous import Reply, Request, run_jobs

__all__ += ["Reply", "Request", "SequenceScores", "candidate_logprobs",
            "continued_option_logprobs", "generate_texts", "option_logprobs", "run_jobs",
            "sequence_logprobs"]
