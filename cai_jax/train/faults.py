"""Fault injection for the resume tests: die abruptly after a given step.

With ``CAI_JAX_FAULT_EXIT_AFTER_STEP=N`` in the environment, a loop that calls
``exit_if_due(n)`` after its n-th step leaves the process at once when n reaches N: no
cleanup, no flushing, like a SIGKILL, possibly while an asynchronous checkpoint is still
being written. Exit code 17. Unset, it does nothing.
"""
from __future__ import annotations

import os

ENV_VAR = "CAI_JAX_FAULT_EXIT_AFTER_STEP"
EXIT_CODE = 17


def exit_after() -> int:
  """The step after which to die (0: never)."""
  return int(os.environ.get(ENV_VAR, "0"))


def exit_if_due(done: int, *, wait=None) -> None:
  """Exits abruptly if ``done`` has reached the injected step.

  Args:
    done: steps (or iterations) completed.
    wait: optional callable run first (e.g. ``checkpointer.wait``, to die just after a
      save is written rather than during it).
  """
  n = exit_after()
  if n and done >= n:
    if wait is not None:
      wait()
    os._exit(EXIT_CODE)  # pylint: disable=protected-access
