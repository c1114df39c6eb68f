"""(4) judge scoring pass and continuation log-probs vs the full forward."""
import numpy as np
import pytest
from conftest import full_logprobs, random_prompts

from cai_jax import sampling
from cai_jax.sharding import make_mesh

SEQS = random_prompts([5, 19, 1, 9], seed=31)


def test_candidate_logprobs_at_last_position(lm):
  got = sampling.candidate_logprobs(lm, SEQS, [10, 20, 30])
  refs = full_logprobs(lm, SEQS)
  want = np.stack([r[-1, [10, 20, 30]] for r in refs])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_candidate_logprobs_at_given_positions_per_row_candidates(lm):
  positions = [2, 0, 0, 8]
  cands = [[1, 2], [3, 4], [5, 6], [7, 8]]
  got = sampling.candidate_logprobs(lm, SEQS, cands, positions=positions)
  refs = full_logprobs(lm, SEQS)
  want = np.stack([r[p, c] for r, p, c in zip(refs, positions, cands)])
  np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(ValueError):
    sampling.candidate_logprobs(lm, SEQS, cands, positions=[2, 0, 1, 9])


def test_sequence_logprobs_equal_full_forward_and_sampler(lm):
  prompts = SEQS
  out = sampling.generate(lm, prompts, max_new_tokens=11, temperature=1.0, seed=3)
  got = sampling.sequence_logprobs(lm, prompts, out.tokens)
  refs = full_logprobs(lm, [p + c for p, c in zip(prompts, out.tokens)])
  for i, (p, c) in enumerate(zip(prompts, out.tokens)):
    want = refs[i][np.arange(len(p) - 1, len(p) + len(c) - 1), c]
    np.testing.assert_allclose(got.per_token[i], want, atol=1e-5)
    np.testing.assert_allclose(got.total[i], want.sum(), atol=1e-4)
    np.testing.assert_allclose(got.per_token[i], out.logprobs[i], atol=1e-4)


def test_sequence_logprobs_long_continuation_is_chunked(lm):
  prompts = random_prompts([3, 40], seed=4)
  conts = random_prompts([150, 7], seed=5)     # span 256 > one 128-position chunk
  got = sampling.sequence_logprobs(lm, prompts, conts)
  refs = full_logprobs(lm, [p + c for p, c in zip(prompts, conts)], length=256)
  for i, (p, c) in enumerate(zip(prompts, conts)):
    want = refs[i][np.arange(len(p) - 1, len(p) + len(c) - 1), c]
    np.testing.assert_allclose(got.total[i], want.sum(), rtol=1e-5, atol=1e-3)


def test_scoring_on_mesh_matches(lm, n_devices):
  mesh = make_mesh(2, 2, 2)
  a = sampling.candidate_logprobs(lm, SEQS, [10, 20], mesh=mesh)
  b = sampling.candidate_logprobs(lm, SEQS, [10, 20])
  np.testing.assert_allclose(a, b, atol=1e-5)
  conts = random_prompts([4, 2, 6, 3], seed=6)
  a = sampling.sequence_logprobs(lm, SEQS, conts, mesh=mesh).total
  b = sampling.sequence_logprobs(lm, SEQS, conts).total
  np.testing.assert_allclose(a, b, atol=1e-4)


def test_option_logprobs_share_the_prompt_and_match_full_forward(lm):
  """k options of different lengths per ragged prompt, one prefill each; brute force ref."""
  prompts = random_prompts([5, 12, 1, 8], seed=21)
  options = [random_prompts([1, 3, 2], seed=30 + i) for i in range(len(prompts))]
  got = sampling.option_logprobs(lm, prompts, options)
  assert got.shape == (4, 3)
  for i, (p, opts) in enumerate(zip(prompts, options)):
    refs = full_logprobs(lm, [p + o for o in opts])
    for j, (o, ref) in enumerate(zip(opts, refs)):
      want = sum(ref[len(p) - 1 + m, t] for m, t in enumerate(o))
      np.testing.assert_allclose(got[i, j], want, atol=1e-4)
  with pytest.raises(ValueError, match="same number"):
    sampling.option_logprobs(lm, prompts[:2], [options[0], options[1][:2]])
