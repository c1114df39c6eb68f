"""Principle sampling is a pure function of (seed, prompt_index, slot)."""
import collections
import os
import random

import pytest

from cai_jax.constitution import (draw_indices, load_constitution, sample_comparison_principles,
                                  sample_critique_principles)
from cai_jax.constitution.load import REPO_ROOT


@pytest.fixture(scope="module")
def constitution():
  return load_constitution(os.path.join(REPO_ROOT, "constitutions", "default.json"))


def _ids(principles):
  return [p.id for p in principles]


def test_same_inputs_same_principles(constitution):
  a = sample_critique_principles(constitution, seed=3, prompt_index=41, num_rounds=4)
  b = sample_critique_principles(constitution, seed=3, prompt_index=41, num_rounds=4)
  assert a == b and len(a) == 4
  c = sample_comparison_principles(constitution, seed=3, prompt_index=41, num=5)
  assert c == sample_comparison_principles(constitution, seed=3, prompt_index=41, num=5)


def test_pinned_values():
  """Bit-stable across runs, machines and library versions (sha256, no RNG state)."""
  assert [draw_indices(1000, stream="x", seed=1, prompt_index=i, num=1, replace=True)[0]
          for i in range(3)] == [576, 54, 176]
  assert draw_indices(16, stream="critique", seed=0, prompt_index=0, num=4,
                      replace=True) == [13, 5, 2, 8]
  assert draw_indices(16, stream="comparison", seed=0, prompt_index=0, num=4,
                      replace=False) == [15, 11, 5, 2]


def test_rounds_are_prefix_stable(constitution):
  four = sample_critique_principles(constitution, seed=7, prompt_index=5, num_rounds=4)
  for n in range(5):
    assert sample_critique_principles(constitution, seed=7, prompt_index=5,
                                      num_rounds=n) == four[:n]
  ens = sample_comparison_principles(constitution, seed=7, prompt_index=5, num=8)
  assert sample_comparison_principles(constitution, seed=7, prompt_index=5, num=3) == ens[:3]


def test_independent_of_call_order(constitution):
  indices = list(range(200))
  forward = {i: _ids(sample_critique_principles(constitution, seed=11, prompt_index=i,
                                                num_rounds=4)) for i in indices}
  random.Random(0).shuffle(indices)
  for i in indices:  # e.g. another shard, or a resumed run, asks in another order
    assert _ids(sample_critique_principles(constitution, seed=11, prompt_index=i,
                                           num_rounds=4)) == forward[i]


def test_prompts_and_seeds_get_different_sequences(constitution):
  seqs = [tuple(_ids(sample_critique_principles(constitution, seed=0, prompt_index=i,
                                                num_rounds=4))) for i in range(500)]
  assert len(set(seqs)) > 450  # 16**4 possible sequences: collisions are rare
  other_seed = [tuple(_ids(sample_critique_principles(constitution, seed=1, prompt_index=i,
                                                      num_rounds=4))) for i in range(500)]
  assert sum(a == b for a, b in zip(seqs, other_seed)) < 10


def test_draws_are_roughly_uniform(constitution):
  counts = collections.Counter(
      p.id for i in range(4000)
      for p in sample_critique_principles(constitution, seed=5, prompt_index=i, num_rounds=2))
  assert len(counts) == 16
  expected = 8000 / 16
  chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
  assert chi2 < 45  # 15 degrees of freedom: p < 1e-4 for a fair sampler
  firsts = collections.Counter(
      sample_comparison_principles(constitution, seed=5, prompt_index=i)[0].id
      for i in range(4000))
  assert len(firsts) == 16 and min(firsts.values()) > 150


def test_critique_and_comparison_streams_differ(constitution):
  same = sum(
      constitution.critique_principles.index(
          sample_critique_principles(constitution, seed=2, prompt_index=i, num_rounds=1)[0])
      == constitution.comparison_principles.index(
          sample_comparison_principles(constitution, seed=2, prompt_index=i)[0])
      for i in range(800))
  assert same < 100  # ~50 expected by chance; a shared stream would give 800


def test_without_replacement(constitution):
  for i in range(50):
    ens = sample_comparison_principles(constitution, seed=0, prompt_index=i, num=16)
    assert len(set(_ids(ens))) == 16
    rounds = sample_critique_principles(constitution, seed=0, prompt_index=i, num_rounds=4,
                                        replace=False)
    assert len(set(_ids(rounds))) == 4
  with pytest.raises(ValueError, match="distinct"):
    sample_comparison_principles(constitution, seed=0, prompt_index=0, num=17)


@pytest.mark.parametrize("kwargs", [dict(seed=-1, prompt_index=0), dict(seed=0, prompt_index=-2),
                                    dict(seed=0.5, prompt_index=0),
                                    dict(seed=0, prompt_index=True)])
def test_bad_arguments(constitution, kwargs):
  with pytest.raises(ValueError, match="non-negative int"):
    sample_critique_principles(constitution, num_rounds=1, **kwargs)
