"""The one-process behaviour of the multi-process helpers, and the binary's job flags (the
multi-process behaviour itself: tests/programs/test_multiprocess.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import app
from jax.sharding import NamedSharding, PartitionSpec as P

from cai_jax import main as main_lib
from cai_jax.sharding import make_mesh, processes


def test_one_process_does_all_the_work():
  assert processes.is_chief()
  assert processes.share([3, 1, 4, 1, 5]) == [3, 1, 4, 1, 5]
  processes.barrier("anything")   # a no-op, no coordination service needed
  assert processes.allgather_json("answers", {"0": ["a", "b"]}) == [{"0": ["a", "b"]}]
  mesh = processes.local_mesh((-1, 2, 1))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


def test_fetch_reads_sharded_and_replicated_arrays():
  mesh = make_mesh(4, 2, 1)
  x = np.arange(32, dtype=np.float32).reshape(8, 4)
  sharded = jax.device_put(x, NamedSharding(mesh, P("data", "fsdp")))
  out = processes.fetch({"a": sharded, "b": jnp.sum(sharded), "c": 3})
  np.testing.assert_array_equal(out["a"], x)
  assert float(out["b"]) == float(x.sum()) and out["c"] == 3


def _job(**kw):
  args = dict(multihost=False, coordinator_address=None, num_processes=None, process_id=None)
  return main_lib.join_job(**{**args, **kw})


def test_job_flags_are_checked_before_joining():
  assert _job() is False   # a one-process run joins nothing
  with pytest.raises(app.UsageError, match="without --num_processes --process_id"):
    _job(coordinator_address="10.0.0.1:1234")
  with pytest.raises(app.UsageError, match="expected host:port"):
    _job(coordinator_address="10.0.0.1", num_processes=2, process_id=0)
  with pytest.raises(app.UsageError, match=r"--process_id=2 is not in 0\.\.1"):
    _job(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=2)
  # off a cluster, --multihost names the flags to pass instead of JAX's bare message
  with pytest.raises(app.UsageError, match="--coordinator_address=HOST:PORT"):
    _job(multihost=True)
