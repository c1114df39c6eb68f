"""Runs an experiment's phases in order, each in its own workdir subfolder.

An experiment gin file binds ``run.program = @pipeline`` and lists the phases as an
ordered mapping from phase name to a gin-configured program::

    pipeline.phases = {
        'data': @toy_data,
        'base': @base/sft,
        'eval_base': @base/evaluate,
    }

Each program is called as ``program(workdir=<root>/<name>)``. A phase whose folder holds
a ``DONE`` marker is skipped, so an interrupted pipeline resumes where it stopped
(programs are themselves resumable inside a phase). Relative paths in the gin bindings
are relative to the experiment root: the pipeline runs with the root as the current
directory, so ``'data/corpus.jsonl'`` means the ``data`` phase's output.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Callable, Mapping

import gin

from cai_jax import workdir as workdir_lib

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def _cwd(path: str):
  old = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(old)


@gin.configurable
def pipeline(workdir: str, *, phases: Mapping[str, Callable] = gin.REQUIRED,
             only: tuple[str, ...] = (), always_run: tuple[str, ...] = ()
             ) -> dict[str, float]:
  """Runs ``phases`` in order under ``workdir``; returns {phase: seconds}.

  Args:
    workdir: the experiment root.
    phases: ordered {name: program}; names must be valid folder names.
    only: if non-empty, run just these phases (their inputs must exist).
    always_run: phases run even when complete (cheap summaries such as a report).
  """
  root = os.path.abspath(workdir)
  os.makedirs(root, exist_ok=True)
  unknown = (set(only) | set(always_run)) - set(phases)
  if unknown:
    raise ValueError(f"pipeline.only names unknown phases {sorted(unknown)}; "
                     f"phases are {list(phases)}")
  timings = {}
  with _cwd(root):
    for i, (name, program) in enumerate(phases.items()):
      if os.sep in name or name.startswith("."):
        raise ValueError(f"bad phase name {name!r}")
      if only and name not in only:
        continue
      phase_dir = os.path.join(root, name)
      banner = f"[{i + 1}/{len(phases)}] {name}"
      if workdir_lib.is_done(phase_dir) and name not in always_run:
        print(f"{banner}: complete, skipped", flush=True)
        continue
      print(f"{banner}: running", flush=True)
      os.makedirs(phase_dir, exist_ok=True)
      start = time.perf_counter()
      program(workdir=phase_dir)
      timings[name] = time.perf_counter() - start
      if not workdir_lib.is_done(phase_dir):
        workdir_lib.mark_done(phase_dir)
      print(f"{banner}: done in {timings[name]:.1f} s", flush=True)
  return timings
