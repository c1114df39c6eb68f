"""Runs an experiment's phases in order, each in its own workdir subfolder.

An experiment gin file binds ``run.program = @pipeline`` and lists the phases as an
ordered mapping from phase name to a gin-configured program::

    pipeline.phases = {
        'data': @toy_data,
        'base': @base/sft,
        'eval_base': @base/evaluate,
    }

Each program is called as ``program(workdir=<root>/<name>)``. A program decides itself
whether its phase is complete (``cai_jax.run.runner``): a phase is skipped only when its
``DONE`` marker carries the identity of the current configuration and inputs and its
output is intact. A phase whose configuration or upstream data changed since it ran is
cleared and run again (``on_change='rerun'``, the default) or refused
(``on_change='error'``). So an interrupted pipeline resumes where it stopped (programs
are themselves resumable inside a phase), and an edited experiment reruns exactly the
phases the edit affects. The experiment root is locked while the pipeline runs.

Relative paths in the gin bindings are relative to the experiment root, so
``'data/corpus.jsonl'`` means the ``data`` phase's output. A local root becomes the current
directory while the pipeline runs. A URL root (``--workdir=gs://bucket/exp``) cannot: the
phases' workdirs are ``gs://bucket/exp/<phase>`` and a relative path that names something
under the root means that (``paths.relative_root``); other relative paths (a local model,
a prompt file of the repository) are found from the cwd as usual. Programs that write
through plain local files (the toy world's data phases) need a local root.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Callable, Mapping

import gin

from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.run import runner as program_lib
from cai_jax.run.lock import WorkdirLock
from cai_jax.sharding import processes

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
             only: tuple[str, ...] = (), always_run: tuple[str, ...] = (),
             on_change: str = "rerun") -> dict[str, float]:
  """Runs ``phases`` in order under ``workdir``; returns {phase: seconds}.

  Args:
    workdir: the experiment root.
    phases: ordered {name: program}; names must be valid folder names.
    only: if non-empty, run just these phases (their inputs must exist).
    always_run: phases run even when complete (cheap summaries such as a report).
    on_change: "rerun" (clear and rerun a phase whose configuration or inputs changed) or
      "error" (stop with the differing arguments named).
  """
  if on_change not in ("rerun", "error"):
    raise ValueError(f"pipeline.on_change must be 'rerun' or 'error', got {on_change!r}")
  root = paths.absolute(workdir)
  paths.makedirs(root)
  unknown = (set(only) | set(always_run)) - set(phases)
  if unknown:
    raise ValueError(f"pipeline.only names unknown phases {sorted(unknown)}; "
                     f"phases are {list(phases)}")
  timings = {}
  mismatch = "restart" if on_change == "rerun" else "error"
  # One process of a multi-process job locks the root; every process runs every phase
  # (programs split or share the work) and they pass a barrier after each phase, so
  # none reads a phase's outputs before process 0 has written them.
  lock = WorkdirLock(root, "pipeline") if processes.is_chief() else contextlib.nullcontext()
  here = _cwd(root) if paths.is_local(root) else paths.relative_root(root)
  with here, lock:
    for i, (name, program) in enumerate(phases.items()):
      if os.sep in name or "/" in name or name.startswith("."):
        raise ValueError(f"bad phase name {name!r}")
      if only and name not in only:
        continue
      phase_dir = paths.join(root, name)
      banner = f"[{i + 1}/{len(phases)}] {name}"
      decorated = getattr(program, "cai_program", None) is not None
      if not decorated and workdir_lib.is_done(phase_dir) and name not in always_run:
        print(f"{banner}: complete, skipped", flush=True)
        continue
      paths.makedirs(phase_dir)
      events = {"on_start": lambda b=banner: print(f"{b}: running", flush=True)}
      if not decorated:
        events["on_start"]()
      start = time.perf_counter()
      with program_lib.policy(mismatch, force=name in always_run, events=events):
        program(workdir=phase_dir)
      if not decorated and not workdir_lib.is_done(phase_dir) and processes.is_chief():
        workdir_lib.mark_done(phase_dir)   # a program decides its own completion
      processes.barrier(f"pipeline:{name}")
      if events.get("skipped"):
        print(f"{banner}: complete, skipped", flush=True)
        continue
      timings[name] = time.perf_counter() - start
      print(f"{banner}: done in {timings[name]:.1f} s", flush=True)
  return timings
