"""Test-wide setup: 8 fake CPU devices, hermetic environment.

The device count must be fixed before JAX initialises its backend, so this runs
at import time of the test session (pytest imports conftest.py first).
"""
import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if "collective_call_terminate_timeout" not in _flags:
  _flags += " --xla_cpu_collective_call_terminate_timeout_seconds=30"
os.environ["XLA_FLAGS"] = _flags.strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)

# An opt-in persistent XLA compilation cache for the binaries the tests start
# (CAI_JAX_TEST_XLA_CACHE=<folder>; a resumed run, the same tiny model in another test,
# is then loaded instead of recompiled). Off by default: the in-process cache once aborted
# the pytest process inside JAX's cache write (put_executable_and_time, CPU, 8 fake
# devices, 2026-12-05), so CI runs without it, as before.
XLA_CACHE = os.environ.get("CAI_JAX_TEST_XLA_CACHE", "")


MAX_MAPPINGS = 25_000


def _mappings() -> int:
  try:
    with open("/proc/self/maps", encoding="utf-8") as f:
      return sum(1 for _ in f)
  except OSError:   # not Linux
    return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after a test module once this process holds more than
  ``MAX_MAPPINGS`` memory mappings. Every XLA:CPU executable maps regions of its own: one
  pytest process running the whole suite reached Linux's limit of 65,530 mappings per
  process (``vm.max_map_count``; 32,000 after tests/sampling and tests/models alone) and
  crashed inside XLA (a segfault, or an abort, in compile). One module adds at most about
  10,000; clearing only past the bound keeps the compiled programs modules share."""
  yield
  if _mappings() > MAX_MAPPINGS:
    jax.clear_caches()
    gc.collect()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long end-to-end check (still runs in CI)")


@pytest.fixture(scope="session")
def n_devices():
  n = len(jax.devices())
  assert n == 8, f"tests expect 8 fake CPU devices, got {n}"
  return n


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_main(workdir, gin_files, gin_params, *, fault_after=None, devices=2, timeout=300,
              flags=()):
  """Runs ``python -m cai_jax.main`` in a subprocess (own device count; no compilation
  cache unless CAI_JAX_TEST_XLA_CACHE names one).

  ``fault_after`` makes the training loop die abruptly after that step (resume tests).
  """
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env.pop("CAI_JAX_FAULT_EXIT_AFTER_STEP", None)
  if fault_after:
    env["CAI_JAX_FAULT_EXIT_AFTER_STEP"] = str(fault_after)
  cmd = [sys.executable, "-m", "cai_jax.main", f"--workdir={workdir}",
         f"--compilation_cache={XLA_CACHE}"]
  cmd += [f"--gin_file={f}" for f in gin_files] + [f"--gin_param={p}" for p in gin_params]
  cmd += list(flags)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="session")
def run_main():
  """The binary as a function: ``run_main(workdir, gin_files, gin_params, ...)``."""
  return _run_main


# The HF parity table: every parity test records (check, case, max error, logit scale);
# the rows are printed at the end of the session, so CI logs show the table.
_ROWS = []


@pytest.fixture
def parity_record():
  def record(check: str, case: str, err: float, scale: float) -> None:
    _ROWS.append((check, case, err, scale))
  return record


def pytest_terminal_summary(terminalreporter):
  if not _ROWS:
    return
  tr = terminalreporter
  tr.section("HF parity (float32, max |logit difference| vs transformers)")
  tr.write_line(f"{'check':8} {'case':28} {'max err':>9} {'logit scale':>11} {'rel':>9}")
  for check, case, err, scale in sorted(_ROWS):
    tr.write_line(f"{check:8} {case:28} {err:9.2e} {scale:11.2f} {err / max(scale, 1):9.2e}")


def _tensorboard_texts(logdir, tag):
  """The text summaries under ``tag`` in ``logdir``'s event files, read with TensorBoard's
  own reader: [(step, text)]."""
  # pylint: disable=import-outside-toplevel
  from tensorboard.backend.event_processing import event_accumulator as ea
  from tensorboard.util import tensor_util
  acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
  acc.Reload()
  return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
          for e in acc.Tensors(tag + "/text_summary")]


@pytest.fixture(scope="session")
def tensorboard_texts():
  """``tensorboard_texts(logdir, tag)``: see ``_tensorboard_texts``."""
  return _tensorboard_texts


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """An offline ``gs://`` store (``tests/bucket_store.py``); the cwd is an empty folder."""
  from bucket_store import make_bucket  # pylint: disable=import-outside-toplevel
  return make_bucket(tmp_path, monkeypatch)
