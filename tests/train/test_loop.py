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


def test_train_epochs_scan_equals_the_step_loop_and_stops_at_the_first_bad_step():
  tx = optax.sgd(0.1)
  data = {"x": np.arange(18, dtype=np.float32).reshape(6, 3) / 10,
          "poison": np.array([0, 0, 0, np.nan, 0, 0], np.float32)}
  loss = lambda p, b, rng: _loss(p, {"x": b["x"], "poison": jnp.sum(b["poison"])}, rng)  # noqa: E731
  run = state_lib.make_train_epochs(loss, tx)
  step = state_lib.make_train_step(loss, tx)
  fresh = lambda: state_lib.create_state({"w": jnp.zeros(3)}, tx)  # noqa: E731
  # Good steps only: the scan equals the step loop on the gathered rows.
  index = np.array([[0, 1], [2, 4], [5, 0]], np.int32)
  state, m = run(fresh(), jax.tree.map(jnp.asarray, data), index, jax.random.key(0))
  ref, losses = fresh(), []
  for rows in index:
    ref, mr = step(ref, {k: v[rows] for k, v in data.items()}, jax.random.key(0))
    losses.append(float(mr["loss"]))
  np.testing.assert_allclose(state.params["w"], ref.params["w"], rtol=1e-6)
  np.testing.assert_allclose(m["loss"], losses, rtol=1e-6)
  assert int(state.step) == 3 and np.asarray(m["finite"]).all()
  # Step 2 reads the NaN row: neither it nor the good step after it is applied.
  index = np.array([[0, 1], [2, 4], [3, 5], [0, 1]], np.int32)
  state, m = run(fresh(), jax.tree.map(jnp.asarray, data), index, jax.random.key(0))
  assert np.asarray(m["finite"]).tolist() == [True, True, False, False]
  ref = fresh()
  for rows in index[:2]:
    ref, _ = step(ref, {k: v[rows] for k, v in data.items()}, jax.random.key(0))
  np.testing.assert_allclose(state.params["w"], ref.params["w"], rtol=1e-6)
  assert int(state.step) == 2
