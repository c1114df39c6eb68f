"""Tests for cai_jax.train.checkpoint: resharded, single-device and fresh-process
restores, keep-N, intervals, metadata, async saves (8 fake CPU devices)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer, abstract_like, abstract_with_shardings

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SAVED_STEP = 7

# Shared with the fresh-process child, so both sides build the same tree. Layers
# use int keys, as flax nnx.List does.
_BUILD = '''
import jax, jax.numpy as jnp, optax

def make_params(key):
  k = jax.random.split(key, 5)
  layer = lambda a, b: {"w": jax.random.normal(a, (8, 8), jnp.bfloat16),
                        "b": jax.random.normal(b, (8,), jnp.float32)}
  return {"embed": jax.random.normal(k[0], (16, 8), jnp.float32),
          "layers": {0: layer(k[1], k[2]), 1: layer(k[3], k[4])}}

OPTIMIZER = optax.adamw(1e-2)
'''
_NS: dict = {}
exec(_BUILD, _NS)  # pylint: disable=exec-used
make_params, OPTIMIZER = _NS["make_params"], _NS["OPTIMIZER"]


def _mesh(shape):
  return Mesh(np.array(jax.devices()).reshape(shape), ("data", "model"))


def _params_specs(layout):
  if layout == "save":  # (8, 1) mesh
    return {"embed": P("data", None), "layers": {i: {"w": P("data", None), "b": P("data")}
                                                 for i in (0, 1)}}
  return {"embed": P(None, "model"), "layers": {0: {"w": P("model", "data"), "b": P("model")},
                                                1: {"w": P(None, "model"), "b": P()}}}


def _shardings(mesh, layout):
  abstract_params = jax.eval_shape(make_params, jax.random.key(0))
  params_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), _params_specs(layout))
  return state_lib.state_shardings(mesh, params_sh, abstract_params, OPTIMIZER), abstract_params


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), tree)


def _checksum(tree):
  return float(sum(np.abs(leaf.astype(np.float64)).sum() for leaf in jax.tree.leaves(_host(tree))))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(_host(a)), jax.tree.leaves(_host(b))):
    np.testing.assert_array_equal(x, y)


def _trained_state():
  """A TrainState after one adamw step (non-zero moments), on one device."""
  params = make_params(jax.random.key(0))
  state = state_lib.create_state(params, OPTIMIZER)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
  updates, opt_state = OPTIMIZER.update(grads, state.opt_state, params)
  state = state.replace(step=jnp.int32(_SAVED_STEP), params=optax.apply_updates(params, updates),
                        opt_state=opt_state)
  return jax.block_until_ready(state)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, n_devices):
  """A checkpoint written from an (8, 1) mesh; yields (dir, host state, metadata)."""
  del n_devices
  directory = tmp_path_factory.mktemp("ckpt") / "run"
  shardings, _ = _shardings(_mesh((8, 1)), "save")
  state = jax.block_until_ready(jax.device_put(_trained_state(), shardings))
  assert state.params["embed"].sharding.spec == P("data", None)
  meta = {"step": _SAVED_STEP, "gin_operative_config": "train.lr = 0.01\n",
          "data_state": {"epoch": 1, "index": 42},
          "blob": base64.b64encode(b"\x00\xffiter").decode("ascii")}
  with Checkpointer(directory) as ckpt:
    assert ckpt.save(_SAVED_STEP, state, metadata=meta)
  return str(directory), _host(state), meta


def test_restore_onto_other_mesh(saved):
  directory, expected, meta = saved
  mesh = _mesh((2, 4))
  shardings, abstract_params = _shardings(mesh, "restore")
  target = state_lib.abstract_state(shardings, abstract_params, OPTIMIZER)
  with Checkpointer(directory) as ckpt:
    assert ckpt.latest_step() == _SAVED_STEP
    state, got_meta = ckpt.restore(target)
  jax.block_until_ready(state)
  assert isinstance(state, state_lib.TrainState)
  assert isinstance(state.opt_state[0], optax.ScaleByAdamState)
  assert set(state.params["layers"]) == {0, 1}  # int keys survive
  assert state.params["layers"][1]["w"].dtype == jnp.bfloat16
  assert state.opt_state[0].mu["layers"][0]["w"].dtype == jnp.bfloat16
  assert int(state.step) == _SAVED_STEP
  for leaf, tgt in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
    assert leaf.sharding == tgt.sharding
    assert leaf.dtype == tgt.dtype
  assert state.params["layers"][0]["w"].sharding.spec == P("model", "data")
  _assert_trees_equal(state, expected)
  assert got_meta == meta


def test_restore_onto_one_device(saved):
  directory, expected, _ = saved
  dev = SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(lambda k: state_lib.create_state(make_params(k), OPTIMIZER),
                          jax.random.key(0))
  target = abstract_with_shardings(shapes, dev)
  with Checkpointer(directory) as ckpt:
    state, _ = ckpt.restore(target, step=_SAVED_STEP)
  assert all(leaf.sharding == dev for leaf in jax.tree.leaves(state))
  _assert_trees_equal(state, expected)


_CHILD = _BUILD + '''
import json, sys
from jax.sharding import SingleDeviceSharding
from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer, abstract_with_shardings
import numpy as np

shapes = jax.eval_shape(lambda k: state_lib.create_state(make_params(k), OPTIMIZER),
                        jax.random.key(0))
target = abstract_with_shardings(shapes, SingleDeviceSharding(jax.devices()[0]))
ckpt = Checkpointer(sys.argv[1])
steps = ckpt.all_steps()
meta_only = ckpt.restore_metadata()
state, meta = ckpt.restore(target)
ckpt.close()
leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(state)]
print(json.dumps({"n_devices": len(jax.devices()), "steps": steps, "meta": meta,
                  "meta_only": meta_only, "checksum": float(sum(np.abs(x).sum() for x in leaves)),
                  "bf16": str(state.params["layers"][1]["w"].dtype),
                  "opt": type(state.opt_state[0]).__name__}))
'''


def test_restore_in_fresh_process(saved):
  directory, expected, meta = saved
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")])))
  proc = subprocess.run([sys.executable, "-c", _CHILD, directory], env=env, cwd=_REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["n_devices"] == 1
  assert out["steps"] == [_SAVED_STEP]
  assert out["meta"] == meta and out["meta_only"] == meta
  assert out["bf16"] == "bfloat16"
  assert out["opt"] == "ScaleByAdamState"
  assert out["checksum"] == pytest.approx(_checksum(expected), rel=1e-12)


def _tiny(value):
  return {"w": jnp.full((4,), value, jnp.float32), "n": jnp.int32(value)}


def test_keep_last_n(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in range(1, 6):
      assert ckpt.save(step, _tiny(step), metadata={"step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [4, 5]
    assert ckpt.latest_step() == 5
    state, meta = ckpt.restore(abstract_like(_tiny(0)))
  assert int(state["n"]) == 5 and meta == {"step": 5}
  assert sorted(p for p in os.listdir(tmp_path) if p.isdigit()) == ["4", "5"]


def test_save_interval_and_force(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=None, save_interval_steps=2, async_save=False) as ckpt:
    assert ckpt.save(2, _tiny(2))
    assert not ckpt.save(3, _tiny(3))
    assert ckpt.save(5, _tiny(5), force=True)
    assert ckpt.all_steps() == [2, 5]
    state, meta = ckpt.restore(abstract_like(_tiny(0)), step=2)
  assert int(state["n"]) == 2 and meta == {}  # None metadata is stored as {}


def test_metadata_round_trip(tmp_path):
  meta = {"step": 3, "gin": "a.b = 1\n", "nested": {"list": [1, 2.5, "x"], "none": None},
          "iter": base64.b64encode(bytes(range(256))).decode("ascii")}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, _tiny(3), metadata=meta)
    assert ckpt.restore_metadata() == meta
    assert ckpt.restore_metadata(step=3) == meta
    with pytest.raises(TypeError, match="JSON-serialisable"):
      ckpt.save(4, _tiny(4), metadata={"raw": b"bytes"})
    assert not ckpt.save(2, _tiny(2))  # not newer than the latest step: skipped
    with pytest.raises(ValueError, match="already exists"):
      ckpt.save(3, _tiny(3), force=True)
    assert ckpt.all_steps() == [3]
  assert base64.b64decode(meta["iter"]) == bytes(range(256))


def test_empty_directory(tmp_path):
  with Checkpointer(tmp_path / "none") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.all_steps() == []
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
      ckpt.restore(abstract_like(_tiny(0)))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
      ckpt.restore_metadata()
    ckpt.save(1, _tiny(1))
    with pytest.raises(FileNotFoundError, match="available steps: \\[1\\]"):
      ckpt.restore(abstract_like(_tiny(0)), step=2)


def test_target_without_sharding_is_rejected(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _tiny(1))
    shapes = jax.eval_shape(lambda: _tiny(0))
    with pytest.raises(ValueError, match="needs a sharding"):
      ckpt.restore(shapes)


def test_async_save_is_a_snapshot(tmp_path):
  """The state can be donated right after save(); the checkpoint keeps the old values."""
  mesh = _mesh((8, 1))
  sh = {"w": NamedSharding(mesh, P("data", None)), "b": NamedSharding(mesh, P())}
  state = jax.device_put({"w": jnp.ones((64, 32)), "b": jnp.ones((32,), jnp.bfloat16)}, sh)
  state = jax.block_until_ready(state)
  update = jax.jit(lambda s: jax.tree.map(lambda x: x * 3 + 1, s), donate_argnums=0)
  target = abstract_like(state)
  with Checkpointer(tmp_path, async_save=True) as ckpt:
    assert ckpt.save(1, state, metadata={"step": 1})
    for _ in range(4):
      state = jax.block_until_ready(update(state))  # block: CPU collectives in flight deadlock
    ckpt.save(2, state, metadata={"step": 2})
    ckpt.wait()
    old, meta = ckpt.restore(target, step=1)
    new, _ = ckpt.restore(target)
  assert meta == {"step": 1}
  assert old["w"].sharding == sh["w"] and old["b"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(old["w"]), 1.0)
  np.testing.assert_array_equal(np.asarray(new["w"]), 121.0)


def test_abstract_with_shardings_prefix():
  mesh = _mesh((2, 4))
  shapes = jax.eval_shape(lambda: {"a": {"x": jnp.zeros((4, 8)), "y": jnp.zeros(2)},
                                   "b": jnp.zeros((8,))})
  rep = NamedSharding(mesh, P())
  out = abstract_with_shardings(shapes, {"a": rep, "b": NamedSharding(mesh, P("model"))})
  assert out["a"]["x"].sharding == rep and out["a"]["y"].sharding == rep
  assert out["b"].sharding.spec == P("model") and out["a"]["x"].shape == (4, 8)
