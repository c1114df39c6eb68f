"""Test-wide setup: 8 fake CPU devices, hermetic environment.

The device count must be fixed before JAX initialises its backend, so this runs
at import time of the test session (pytest imports conftest.py first).
"""
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


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long end-to-end check (still runs in CI)")


@pytest.fixture(scope="session")
def n_devices():
  n = len(jax.devices())
  assert n == 8, f"tests expect 8 fake CPU devices, got {n}"
  return n
