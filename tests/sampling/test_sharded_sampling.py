"""(d) the same call on 8 fake devices (meshes 4x2 and 2x2x2) returns the same tokens."""
import numpy as np
import pytest
from conftest import random_prompts

from cai_jax import sampling
from cai_jax.sharding import make_mesh

PROMPTS = random_prompts([5, 12, 1, 8, 3], seed=9)
MESHES = {"data4_tensor2": (4, 1, 2), "2x2x2": (2, 2, 2)}


def _run(lm, mesh):
  s = sampling.Sampler.from_model(lm, mesh=mesh)
  greedy = s.generate(PROMPTS, max_new_tokens=10, stop_tokens=[7], keep_state=True,
                      cache_len=64)
  cont = s.continue_generation(greedy.conversation, random_prompts([3, 1, 6, 2, 4], seed=4),
                               max_new_tokens=6)
  sampled = s.generate(PROMPTS[:3], max_new_tokens=8, temperature=1.0, top_k=10, seed=3,
                       num_samples=2)
  return greedy, cont, sampled


@pytest.fixture(scope="module")
def reference(lm):
  return _run(lm, None)


@pytest.mark.parametrize("name", sorted(MESHES))
def test_d_mesh_matches_single_device(lm, reference, n_devices, name):
  mesh = make_mesh(*MESHES[name])
  outs = _run(lm, mesh)
  for got, want in zip(outs, reference):
    assert got.tokens == want.tokens
    for a, b in zip(got.logprobs, want.logprobs):
      np.testing.assert_allclose(a, b, atol=1e-4)


def test_cache_is_sharded(lm, n_devices):
  mesh = make_mesh(2, 2, 2)
  s = sampling.Sampler.from_model(lm, mesh=mesh)
  conv, _ = s.start(PROMPTS, min_free=8)
  spec = conv.state.cache[0]["k"].sharding.spec
  assert tuple(spec)[:2] == (("data", "fsdp"), "tensor")         # [b, m, S, k]
  assert all(x is None for x in tuple(spec)[2:])
