"""One run per workdir: a lock file holding the owner's pid, host and program.

``WorkdirLock(workdir, program)`` creates ``{workdir}/LOCK`` exclusively. A second run on
the same workdir fails at once with the owner named. A lock left by a process that is
gone (same host, pid no longer alive) is taken over with a message. The same process may
take its own lock again (nested programs): the lock counts its holders.

On an object store (``gs://`` workdir) there is no exclusive create: the lock is best
effort. It is taken by checking that ``LOCK`` is absent, writing it with a unique token
and reading it back; a run that finds another token (a second run started at the same
moment and wrote last) fails as if the workdir were busy. Two runs starting within the
same instant can still both pass, which is why a workdir is meant for one run.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

from cai_jax import paths

_log = logging.getLogger(__name__)
LOCK_FILE = "LOCK"
_held: dict[str, int] = {}


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir."""


def pid_alive(pid: int) -> bool:
  """Whether process ``pid`` exists on this host (one owned by another user counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _read(path: str) -> dict:
  try:
    with paths.open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """Context manager: holds ``{workdir}/LOCK`` while a program runs in ``workdir``."""

  def __init__(self, workdir: str, program: str):
    self.workdir = paths.absolute(workdir)
    self.path = paths.join(self.workdir, LOCK_FILE)
    self.program = program

  def __enter__(self) -> WorkdirLock:
    if _held.get(self.path):
      _held[self.path] += 1
      return self
    paths.makedirs(self.workdir)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "program": self.program,
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not paths.is_local(self.path):
      return self._enter_object_store(me)
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_or_raise()
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
      _held[self.path] = 1
      return self
    raise WorkdirBusyError(f"could not lock {self.workdir} (another run keeps taking it)")

  def _enter_object_store(self, me: dict) -> WorkdirLock:
    """The best-effort lock of an object store (module docstring)."""
    me = dict(me, token=paths.unique_token())
    for _ in range(3):
      if paths.exists(self.path):
        self._take_over_or_raise()
        continue
      with paths.open(self.path, "w") as f:
        json.dump(me, f)
      if _read(self.path).get("token") != me["token"]:
        self._take_over_or_raise()
        continue
      _held[self.path] = 1
      return self
    raise WorkdirBusyError(f"could not lock {self.workdir} (another run keeps taking it)")

  def _take_over_or_raise(self) -> None:
    owner = _read(self.path)
    pid, host = owner.get("pid"), owner.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
      _log.warning("%s: taking over the lock of %s (pid %d on %s since %s), which is no "
                   "longer running", self.workdir, owner.get("program"), pid, host,
                   owner.get("since"))
      paths.remove(self.path, missing_ok=True)
      return
    if not owner:   # being written right now, or unreadable: give the writer a moment
      time.sleep(0.2)
      if not _read(self.path):
        raise WorkdirBusyError(f"{self.path} exists but is unreadable; if no run uses "
                               f"{self.workdir}, delete it")
      return
    raise WorkdirBusyError(
        f"{self.workdir} is in use by {owner.get('program')} (pid {pid} on {host}, since "
        f"{owner.get('since')}); two runs must not share a workdir. Wait for it, or, if "
        f"that process is gone on another machine, delete {self.path}")

  def __exit__(self, *exc) -> None:
    _held[self.path] -= 1
    if not _held[self.path]:
      del _held[self.path]
      paths.remove(self.path, missing_ok=True)
