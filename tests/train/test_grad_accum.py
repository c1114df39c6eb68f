"""Gradient accumulation: k micro-batches give the update of the whole batch (token-
weighted for token-mean losses, uneven padding included), in the single step, in the
scanned steps (PPO's minibatches) and on a sharded mesh; a batch that does not split is
refused."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cai_jax import models
from cai_jax.losses.lm import masked_lm_loss
from cai_jax.rl import ppo as ppo_lib
from cai_jax.sharding import batch_putter, make_mesh
from cai_jax.train import state as state_lib
from cai_jax.train import trainer

CFG = models.ModelConfig(vocab_size=48, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_ff=32)
B, T = 8, 10


def _lm_loss(graphdef):
  def loss_fn(params, batch, rng):
    del rng
    logits = models.merge(graphdef, params)(batch["tokens"][:, :-1])
    loss, n = masked_lm_loss(logits, batch["tokens"][:, 1:], batch["loss_mask"][:, 1:])
    return loss, {"target_tokens": n, "logit_mean": jnp.mean(logits)}
  return loss_fn


def _batch():
  """Uneven padding: rows keep 1..T-1 target tokens, so micro-batches differ in size."""
  rng = np.random.default_rng(0)
  mask = np.zeros((B, T), np.float32)
  for i, n in enumerate([2, 9, 3, 1, 8, 5, 2, 9]):
    mask[i, :n + 1] = 1.0
  return {"tokens": rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32),
          "loss_mask": mask}


def _close(a, b, rtol=2e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = float(np.max(np.abs(y))) or 1.0
    np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6 * scale)


@pytest.fixture(scope="module")
def lm():
  graphdef, params = models.init(CFG, "lm", seed=0)
  return graphdef, params


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_gradient_is_the_batch_gradient(lm, k):
  graphdef, params = lm
  loss_fn, batch, rng = _lm_loss(graphdef), _batch(), jax.random.key(0)
  f = jax.jit(lambda p, b, steps, w: state_lib.accumulated_value_and_grad(
      loss_fn, p, b, rng, steps, w), static_argnums=(2, 3))
  (l1, aux1), g1 = f(params, batch, 1, "target_tokens")
  (lk, auxk), gk = f(params, batch, k, "target_tokens")
  np.testing.assert_allclose(lk, l1, rtol=1e-6)
  assert float(auxk["target_tokens"]) == float(aux1["target_tokens"]) == 39.0
  _close(gk, g1)
  # Equal weights are wrong for a token mean over uneven rows: the test can tell.
  _, gu = f(params, batch, k, None)
  assert max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(gu), jax.tree.leaves(g1))) > 1e-5


@pytest.mark.parametrize("k", [2, 4])
def test_train_step_same_update(lm, k):
  """One ``make_train_step`` update (SGD: the update is the gradient, and AdamW) with k
  micro-batches equals the one of the whole batch."""
  graphdef, params = lm
  batch, rng = _batch(), jax.random.key(1)
  # SGD's update is the gradient (a tight check); Adam's divides by |g| + eps, so a
  # gradient entry near eps may move by a fraction of the learning rate: atol 1% of lr.
  for tx, atol in ((optax.sgd(0.5), None), (optax.adamw(1e-2), 1e-4)):
    states = []
    for steps in (1, k):
      step = state_lib.make_train_step(_lm_loss(graphdef), tx, grad_accum_steps=steps,
                                       accum_weight=trainer.ACCUM_WEIGHT)
      state = state_lib.create_state(jax.tree.map(jnp.copy, params), tx)
      states.append(step(state, batch, rng))
    (s1, m1), (sk, mk) = states
    if atol is None:
      _close(sk.params, s1.params, rtol=1e-4)
    else:
      for x, y in zip(jax.tree.leaves(sk.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)
    np.testing.assert_allclose(mk["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(mk["grad_norm"], m1["grad_norm"], rtol=1e-5)


def test_sharded_accumulation_matches_one_device(lm, n_devices):
  graphdef, params = lm
  mesh = make_mesh(2, 2, 2)
  tx = optax.sgd(0.5)
  shardings = trainer.state_layout(mesh, models.abstract(CFG)[1],
                                   models.param_shardings(CFG, mesh), tx)
  init = trainer.ModelInit(CFG, "lm", lambda m: None)
  step = trainer.make_step(init, _lm_loss, tx, shardings.shardings, B,
                           trainer.MemoryOptions(grad_accum_steps=2, remat="full"))
  with jax.set_mesh(mesh):
    state = shardings.create(jax.device_put(params, models.param_shardings(CFG, mesh)))
    sk, _ = step(state, batch_putter(mesh, B)(_batch()), jax.random.key(1))
  ref = state_lib.make_train_step(_lm_loss(graphdef), tx)
  s1, _ = ref(state_lib.create_state(jax.tree.map(jnp.copy, params), tx), _batch(),
              jax.random.key(1))
  _close(jax.device_get(sk.params), s1.params, rtol=1e-4)


def test_batch_that_does_not_split_is_refused(lm):
  graphdef, params = lm
  tx = optax.sgd(0.1)
  step = state_lib.make_train_step(_lm_loss(graphdef), tx, grad_accum_steps=3)
  with pytest.raises(ValueError, match="grad_accum_steps=3 does not divide"):
    step(state_lib.create_state(params, tx), _batch(), jax.random.key(0))
  init = trainer.ModelInit(CFG, "lm", lambda m: None)
  with pytest.raises(ValueError, match="batch_size=8 is not a multiple"):
    trainer.make_step(init, _lm_loss, tx, None, 8, trainer.MemoryOptions(3))
  with pytest.raises(ValueError, match="grad_accum_steps"):
    trainer.MemoryOptions(0)
  with pytest.raises(ValueError, match="remat"):
    trainer.MemoryOptions(1, "most")
  with pytest.raises(ValueError, match="grad_accum_steps"):
    ppo_lib.PPOConfig(rollout_batch=16, minibatch_size=8, grad_accum_steps=3)


def test_memory_options_from_gin():
  assert trainer.memory_options() == trainer.MemoryOptions()
  try:
    gin.parse_config("memory_options.grad_accum_steps = 4\nmemory_options.remat = 'full'")
    assert trainer.memory_options() == trainer.MemoryOptions(4, "full")
  finally:
    gin.clear_config()


def _ppo_data(b=16, t=12):
  rng = np.random.default_rng(1)
  mask = np.zeros((b, t - 1), np.float32)
  for i in range(b):
    start = int(rng.integers(1, 5))
    mask[i, start:start + int(rng.integers(1, t - 1 - start))] = 1.0
  f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
  return {"tokens": rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32), "mask": mask,
          "logp": rng.uniform(-5.0, -1.0, (b, t - 1)).astype(np.float32),
          "values": f(b, t - 1), "advantages": f(b, t - 1), "returns": f(b, t - 1)}


def test_ppo_minibatch_accumulation_same_updates():
  """``make_train_epochs`` (PPO's scan over minibatches) with the PPO loss and its token
  weight: k = 2, 4 micro-batches per minibatch give the parameters of k = 1."""
  pgraph, pparams = models.init(CFG, "lm", seed=0)
  vgraph, vparams = models.init(CFG, "scalar", seed=1)
  vparams["head_w_d"] = jnp.linspace(-0.5, 0.5, CFG.d_model)
  loss = ppo_lib.ppo_loss_fn({"policy": pgraph, "value": vgraph}, clip_eps=0.2,
                             value_clip=0.2, vf_coef=0.5)
  tx = optax.sgd(0.3)
  data = _ppo_data()
  index = jnp.asarray(np.random.default_rng(2).permutation(16).reshape(2, 8), jnp.int32)
  out = {}
  for k in (1, 2, 4):
    run = state_lib.make_train_epochs(loss, tx, grad_accum_steps=k,
                                      accum_weight=ppo_lib.ppo_token_weight)
    state = state_lib.create_state(jax.tree.map(jnp.copy, {"policy": pparams,
                                                           "value": vparams}), tx)
    out[k] = run(state, data, index, jax.random.key(0))
  for k in (2, 4):
    _close(out[k][0].params, out[1][0].params, rtol=1e-4)
    np.testing.assert_allclose(out[k][1]["loss"], out[1][1]["loss"], rtol=1e-5)
