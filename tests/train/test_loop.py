"""The shared loop: NaN guard stops the run and keeps the last good checkpoint."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from cai_jax.train.loop import NonFiniteError, train_loop


def _loss(params, batch, rng):
  del rng
  # batch["poison"] is 0 normally and NaN when the test wants a bad step
  return jnp.sum((params["w"] - batch["x"]) ** 2) + batch["poison"], {}


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
  tx = optax.sgd(0.1)
  state = state_lib.create_state({"w": jnp.zeros(3)}, tx)
  step_fn = state_lib.make_train_step(_loss, tx)
  batches = iter([{"x": np.ones(3, np.float32), "poison": np.float32(0)}] * 4
                 + [{"x": np.ones(3, np.float32), "poison": np.float32(np.nan)}] * 4)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=5, async_save=False)

  def put(batch):
    return jax.tree.map(jnp.asarray, batch)

  with pytest.raises(NonFiniteError, match="non-finite loss or gradients at step 5"):
    train_loop(state=state, step_fn=step_fn, batches=batches, num_steps=8,
               rng=jax.random.key(0), put_batch=put, checkpointer=ckpt, ckpt_every=2,
               log_every=1)
  assert ckpt.all_steps() == [2, 4]
  shapes = jax.eval_shape(lambda: state_lib.create_state({"w": jnp.zeros(3)}, tx))
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = abstract_with_shardings(shapes, jax.tree.map(lambda _: dev, shapes))
  restored, meta = ckpt.restore(abstract)
  assert int(restored.step) == 4 and meta["step"] == 4
  expected = 1 - 0.8 ** 4  # four SGD steps of w <- w - 0.1 * 2 (w - 1)
  np.testing.assert_allclose(restored.params["w"], expected, rtol=1e-6)
  assert np.all(np.isfinite(restored.params["w"]))


def test_step_does_not_apply_non_finite_update():
  tx = optax.sgd(0.1)
  state = state_lib.create_state({"w": jnp.ones(2)}, tx)
  step_fn = state_lib.make_train_step(_loss, tx)
  new, m = step_fn(state, {"x": jnp.zeros(2), "poison": jnp.float32(jnp.inf)}, jax.random.key(0))
  assert not bool(m["finite"])
  np.testing.assert_array_equal(new.params["w"], np.ones(2))
  assert int(new.step) == 0
