"""benchmarks/memory_plan.py at a tiny shape, against a hand count of the same bytes."""
import importlib.util
import os
import sys

import pytest

from cai_jax import models
from cai_jax.sharding import make_mesh

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "memory_plan.py")
_spec = importlib.util.spec_from_file_location("memory_plan", _PATH)
mp = importlib.util.module_from_spec(_spec)
sys.modules["memory_plan"] = mp   # dataclasses look their module up
_spec.loader.exec_module(mp)

V, D, L, N, M, K, F = 64, 32, 2, 8, 4, 4, 48


def _cfg(dtype="bfloat16", tie=False):
  return models.ModelConfig(vocab_size=V, d_model=D, n_layers=L, n_heads=N, n_kv_heads=M,
                            d_ff=F, tie_embeddings=tie, param_dtype=dtype, dtype=dtype)


def _hand_params(tie):
  """Parameter counts by hand, split by how the rules shard them:
  (fsdp and tensor), (fsdp only: norms and the value head), (replicated)."""
  attn = D * N * K * 2 + D * M * K * 2          # wq, wo; wk, wv: embed x heads
  mlp = 3 * D * F                               # embed x mlp
  both = L * (attn + mlp) + V * D * (1 if tie else 2)
  fsdp_only = (2 * L + 1) * D                   # two norms per layer + the final norm
  return both, fsdp_only


@pytest.mark.parametrize("mesh_shape,dtype,tie", [((1, 8, 1), "bfloat16", False),
                                                  ((1, 4, 2), "float32", False),
                                                  ((1, 2, 4), "bfloat16", True),
                                                  ((8, 1, 1), "float32", False)])
def test_state_bytes_against_hand_count(mesh_shape, dtype, tie):
  data, fsdp, tensor = mesh_shape
  mesh = make_mesh(*mesh_shape)
  nbytes = 2 if dtype == "bfloat16" else 4
  both, fsdp_only = _hand_params(tie)
  lm = mp.model_state_bytes(_cfg(dtype, tie), mesh, "lm")
  hand = (both / (fsdp * tensor) + fsdp_only / fsdp) * nbytes
  assert lm["params"] == hand == lm["grads"]
  # AdamW: mu and nu shaped (and typed) like the parameters, sharded like them; the
  # step count and clipping state are a few replicated scalars.
  assert 2 * hand <= lm["opt"] <= 2 * hand + 64
  scalar = mp.model_state_bytes(_cfg(dtype, tie), mesh, "scalar")
  lm_head = 0 if tie else V * D * nbytes / (fsdp * tensor)
  head = D * nbytes / fsdp + 4                  # head_w_d (embed) + head_b (float32)
  assert scalar["params"] == hand - lm_head + head


def test_kv_cache_and_plan_totals():
  cfg = _cfg()
  mesh = make_mesh(1, 4, 2)
  with pytest.raises(ValueError, match="not divisible"):   # 6 rows over data x fsdp = 4
    mp.kv_cache_bytes(cfg, mesh, 6, 128)
  assert mp.kv_cache_bytes(cfg, mesh, 64, 128) == 2 * L * (64 // 4) * 128 * (M // 2) * K * 2
  plan = mp.ppo_plan("tiny", cfg, "fsdp4_tensor2", mesh, remat="full", rollout=64,
                     rollout_len=128, minibatch=16)
  p = plan.parts
  assert p["reference_params"] == p["policy_params"] and p["pm_params"] == p["value_params"]
  assert plan.resident == (p["policy_params"] + p["policy_opt"] + p["value_params"]
                           + p["value_opt"] + p["reference_params"] + p["pm_params"])
  assert plan.peak == plan.resident + max(p["kv_cache"], plan.learn)
  none = mp.ppo_plan("tiny", cfg, "fsdp4_tensor2", mesh, remat="none", rollout=64,
                     rollout_len=128, minibatch=16)
  assert none.parts["activations"] > p["activations"]


def test_activation_estimate_by_hand():
  cfg = _cfg()
  mesh = make_mesh(1, 4, 2)
  tokens = 16 * 128 / 4
  layer = 2 * (6 * D + (3 * N * K + 4 * M * K + 4 * F) / 2) + N * 128 * (8 + 2) / 2
  head = 3 * 4 * V / 2
  assert mp.activation_bytes(cfg, mesh, 16, 128, "none") == int(tokens * (L * layer + head))
  assert mp.activation_bytes(cfg, mesh, 16, 128, "full", lm_head=False) == int(
      tokens * (L * 2 * D + layer))


def test_compiled_step_state_matches_the_count():
  """XLA's argument bytes of the compiled PPO step are the train state the plan counts."""
  cfg = _cfg("float32")
  mesh = make_mesh(1, 4, 2)
  ma = mp.compiled_ppo_step(cfg, mesh, rows=8, length=16)
  plan = mp.ppo_plan("tiny", cfg, "fsdp4_tensor2", mesh, remat="none", rollout=8,
                     rollout_len=16, minibatch=8)
  p = plan.parts
  state = p["policy_params"] + p["policy_opt"] + p["value_params"] + p["value_opt"]
  batch = (8 * 16 * 4 + 5 * 8 * 15 * 4) / 4   # tokens + 5 float rows, over data x fsdp
  assert ma.argument_size_in_bytes == pytest.approx(state + batch + 8, abs=64)
