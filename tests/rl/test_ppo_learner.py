"""PPOLearner.learn: all minibatch steps of an iteration in one jitted scan over the
rollout kept on the devices give the parameters and mean metrics of the per-minibatch
loop (host slices of the same permutations, one ``make_train_step`` call each), on one
device and on a sharded mesh; a non-finite step raises naming it and applies nothing
from it on."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import models
from cai_jax.rl import ppo as ppo_lib
from cai_jax.rl.reward import RewardModel
from cai_jax.sampling import call_seed
from cai_jax.sharding import batch_putter, make_mesh
from cai_jax.train import state as state_lib
from cai_jax.train import trainer
from cai_jax.train.optim import make_optimizer

CFG = models.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=4, n_kv_heads=2,
                         d_ff=32)
PPO = ppo_lib.PPOConfig(rollout_batch=16, minibatch_size=8, ppo_epochs=2, seed=5)
T, ITERATION = 12, 3


def _rollout_data(nan_rows=()):
  """Random rollout tensors (host); every row has response tokens; ``nan_rows`` get NaN
  advantages."""
  rng = np.random.default_rng(0)
  b = PPO.rollout_batch
  mask = np.zeros((b, T - 1), np.float32)
  for i in range(b):
    start = int(rng.integers(1, 5))
    mask[i, start:start + int(rng.integers(2, T - 1 - start))] = 1.0
  adv = rng.normal(size=(b, T - 1)).astype(np.float32)
  adv[list(nan_rows)] = np.nan
  return {"tokens": rng.integers(0, CFG.vocab_size, (b, T), dtype=np.int32), "mask": mask,
          "logp": rng.uniform(-5.0, -1.0, (b, T - 1)).astype(np.float32),
          "values": rng.normal(size=(b, T - 1)).astype(np.float32),
          "advantages": adv, "returns": rng.normal(size=(b, T - 1)).astype(np.float32)}


def _setup(mesh):
  """(learner, fresh-state maker, loss function, optimizer, state shardings)."""
  pgraph, pparams = models.init(CFG, "lm", seed=0, mesh=mesh)
  vgraph, vparams = models.init(CFG, "scalar", seed=1, mesh=mesh)
  roles = {"policy": "lm", "value": "scalar"}
  tx, _ = make_optimizer(total_steps=20, learning_rate=3e-3)
  layout = trainer.state_layout(
      mesh, {r: models.abstract(CFG, k)[1] for r, k in roles.items()},
      {r: models.param_shardings(CFG, mesh, k) for r, k in roles.items()}, tx)
  graphdefs = {"policy": pgraph, "value": vgraph, "reward": vgraph}
  learner = ppo_lib.PPOLearner(PPO, mesh=mesh, graphdefs=graphdefs, ref_params=pparams,
                               reward=RewardModel(vgraph, vparams, None), optimizer=tx,
                               state_shardings=layout.shardings)
  params = {"policy": pparams, "value": vparams}
  fresh = lambda: layout.create(jax.tree.map(jnp.copy, params))  # noqa: E731 (donated)
  loss = ppo_lib.ppo_loss_fn(graphdefs, clip_eps=PPO.clip_eps, value_clip=PPO.value_clip,
                             vf_coef=PPO.vf_coef)
  return learner, fresh, loss, tx, layout.shardings


def _per_minibatch_loop(mesh, state, loss, tx, shardings, data, max_steps=None):
  """The learner's former loop: host slices of each epoch's permutation, one jitted
  ``make_train_step`` call (and metrics read) per minibatch; stops at a bad step."""
  step = state_lib.make_train_step(loss, tx, state_sharding=shardings)
  put = batch_putter(mesh, PPO.minibatch_size)
  seen = []
  with jax.set_mesh(mesh):
    for epoch in range(PPO.ppo_epochs):
      perm = np.random.default_rng(call_seed(PPO.seed, "minibatch", ITERATION, epoch)
                                   ).permutation(PPO.rollout_batch)
      for j in range(PPO.minibatches):
        if len(seen) == max_steps:
          return state, seen
        sel = perm[j * PPO.minibatch_size:(j + 1) * PPO.minibatch_size]
        state, m = step(state, put({k: v[sel] for k, v in data.items()}),
                        jax.random.key(PPO.seed))
        m = jax.device_get(m)
        assert bool(m.pop("finite"))
        seen.append(m)
  return state, seen


def _assert_same_params(got, want):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-5, atol=1e-6),
               jax.device_get(got.params), jax.device_get(want.params))
  assert int(got.step) == int(want.step)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2)])
def test_fused_learn_matches_the_per_minibatch_loop(shape, n_devices):
  mesh = make_mesh(*shape)
  learner, fresh, loss, tx, shardings = _setup(mesh)
  data = _rollout_data()
  ref_state, seen = _per_minibatch_loop(mesh, fresh(), loss, tx, shardings, data)
  ro = ppo_lib.Rollout(batch_putter(mesh, PPO.rollout_batch)(data), {}, 0.0, [])
  assert ro.data["tokens"].sharding.spec[0] == ("data", "fsdp")
  state, metrics = learner.learn(fresh(), ro, ITERATION)
  assert int(state.step) == PPO.steps_per_iteration == len(seen) == 4
  _assert_same_params(state, ref_state)
  want = {k: float(np.mean([float(m[k]) for m in seen])) for k in seen[0]}
  assert set(metrics) == set(want) and "policy/loss" in want and "value/loss" in want
  for k, v in want.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  # the parameters moved, and the state keeps its shardings
  assert not np.allclose(np.asarray(state.params["policy"]["embed_vd"]),
                         np.asarray(fresh().params["policy"]["embed_vd"]))
  jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim) or pytest.fail(str(s)),
               state, shardings)


def test_non_finite_step_raises_naming_it_and_applies_nothing_from_it_on(n_devices):
  mesh = make_mesh(2, 1, 1)
  learner, fresh, loss, tx, shardings = _setup(mesh)
  index = learner.minibatch_index(ITERATION)
  np.testing.assert_array_equal(np.sort(index[:2].ravel()), np.arange(PPO.rollout_batch))
  data = _rollout_data(nan_rows=index[1])   # the 2nd step: epoch 0, minibatch 1
  ro = ppo_lib.Rollout(batch_putter(mesh, PPO.rollout_batch)(data), {}, 0.0, [])
  with pytest.raises(FloatingPointError,
                     match=r"iteration 3 \(epoch 0, minibatch 1\).*not applied"):
    learner.learn(fresh(), ro, ITERATION)
  state, metrics = learner.train_steps(fresh(), ro, ITERATION)
  assert metrics["finite"].tolist() == [True, False, False, False]
  assert np.isfinite(metrics["loss"][0]) and not np.isfinite(metrics["loss"][1])
  ref_state, _ = _per_minibatch_loop(mesh, fresh(), loss, tx, shardings, data, max_steps=1)
  assert int(state.step) == 1
  _assert_same_params(state, ref_state)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state)))
