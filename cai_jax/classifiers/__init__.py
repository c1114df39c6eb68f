"""Constitutional classifiers (Sharma et al. 2025): small scalar-head models used as
filters at inference time.

  StreamingClassifier(graphdef, params): scores prefixes and streamed continuations from
    its own KV cache (``stream_prefill`` / ``stream_extend``: one cached step per token).
  GuardedSampler(sampler, input_classifier, output_classifier, ...): an input check on the
    prompt, then the output (or exchange) classifier scored every k generated tokens; a
    row whose score crosses the threshold stops and gets a refusal.
  threshold_for_false_refusal_rate(benign_scores, target_rate): threshold calibration.
"""
from cai_jax.classifiers.guard import (GuardedSampler, GuardOutput,
                                       threshold_for_false_refusal_rate)
from cai_jax.classifiers.streaming import (ClassifierStream, StreamingClassifier,
                                           empty_state, stream_extend, stream_prefill)

__all__ = ["ClassifierStream", "GuardOutput", "GuardedSampler", "StreamingClassifier",
           "empty_state", "stream_extend", "stream_prefill",
           "threshold_for_false_refusal_rate"]
