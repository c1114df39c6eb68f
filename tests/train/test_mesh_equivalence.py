"""Forward and train step give the same numbers on every mesh as on one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import models
from cai_jax.programs.sl_cai.sft import lm_loss_fn
from cai_jax.sharding import batch_putter, make_mesh
from cai_jax.train import state as state_lib
from cai_jax.train.optim import make_optimizer

CFG = models.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=8, n_kv_heads=4,
                         d_ff=64)
MESHES = [(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 2, 4)]
B, T = 8, 16


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CFG.vocab_size, (B, T), dtype=np.int32)
  mask = (rng.random((B, T)) < 0.7).astype(np.int32)
  return {"tokens": tokens, "loss_mask": mask}


def _reference(num_steps):
  """Single device, no mesh: logits and params after ``num_steps`` steps."""
  graphdef, params = models.init(CFG, seed=3)
  tx, _ = make_optimizer(total_steps=10, learning_rate=1e-2)
  step = state_lib.make_train_step(lm_loss_fn(graphdef), tx)
  logits = models.merge(graphdef, params)(jnp.asarray(_batch()["tokens"]))
  state = state_lib.create_state(params, tx)
  losses = []
  for _ in range(num_steps):
    state, m = step(state, jax.tree.map(jnp.asarray, _batch()), jax.random.key(0))
    losses.append(float(m["loss"]))
  return np.asarray(logits), jax.device_get(state.params), losses


@pytest.fixture(scope="module")
def reference():
  return _reference(num_steps=3)


@pytest.mark.parametrize("shape", MESHES)
def test_forward_and_train_step_match_single_device(shape, reference, n_devices):
  ref_logits, ref_params, ref_losses = reference
  mesh = make_mesh(*shape)
  graphdef, params = models.init(CFG, seed=3, mesh=mesh)
  put = batch_putter(mesh, B)
  with jax.set_mesh(mesh):
    logits = jax.jit(lambda p, t: models.merge(graphdef, p)(t))(params, put(_batch())["tokens"])
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-5)

    tx, _ = make_optimizer(total_steps=10, learning_rate=1e-2)
    _, abstract_params, _ = models.abstract(CFG)
    shardings = state_lib.state_shardings(mesh, models.param_shardings(CFG, mesh),
                                          abstract_params, tx)
    state = jax.jit(lambda p: state_lib.create_state(p, tx), out_shardings=shardings)(params)
    step = state_lib.make_train_step(lm_loss_fn(graphdef), tx, state_sharding=shardings)
    losses = []
    for _ in range(3):
      state, m = step(state, put(_batch()), jax.random.key(0))
      losses.append(float(m["loss"]))  # blocks every step (CPU collective rule)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  # moments keep their parameter's sharding
  mu = state.opt_state[1][0].mu["layers"][0]["attn"]["wq_dnk"]
  assert mu.sharding == shardings.params["layers"][0]["attn"]["wq_dnk"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=2e-5),
               jax.device_get(state.params), ref_params)
