"""Programs as runs with an identity: the ``program`` decorator.

Every program (``sft``, ``generate_sl``, ...) is decorated with ``@program(name, ...)``.
A call then, before any work:

1. checks every argument's type and range (``run.checks``);
2. computes the run's fingerprint (``run.identity``: operative arguments minus cosmetic
   ones, the content of its inputs, the package version);
3. takes the workdir's lock (``run.lock``: one run per workdir);
4. compares with what the workdir holds (``RUN.json``, the identity of the run that made
   its checkpoints and shards; ``DONE``, the identity of the run that completed it):
   complete with the same identity and its output intact -> returns the recorded result
   without running; same identity -> the program resumes; another identity -> a
   ``RunMismatchError`` naming the differing arguments, unless the policy is
   ``"restart"`` (``main.py --restart``, or a pipeline re-running a phase whose
   configuration or upstream data changed), which clears the workdir and starts over;
5. clears stale temporaries (``*.tmp``, Orbax's ``*.orbax-checkpoint-tmp*``,
   TFDS's ``incomplete.*``) and writes ``RUN.json``;
6. runs the program and, last, writes ``DONE`` with the identity, the program's summary
   and its result (a path is recorded with its content hash and verified on skip).

A program called by another program on the same workdir (``toy_base`` training with
``sft``) runs inside the outer one's identity and does not write its own ``DONE``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
from typing import Any, Callable, Iterable, Iterator

import jax

from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.run import checks, identity
from cai_jax.run.lock import WorkdirLock

_log = logging.getLogger(__name__)

RUN_FILE = "RUN.json"
_KEEP = ("LOCK", "config.gin", "operative_config.gin")
_NOT_WORK = _KEEP + (RUN_FILE, "spec.json")

on_mismatch: contextvars.ContextVar[str] = contextvars.ContextVar("on_mismatch",
                                                                 default="error")
_force: contextvars.ContextVar[bool] = contextvars.ContextVar("force", default=False)
_events: contextvars.ContextVar[dict | None] = contextvars.ContextVar("events", default=None)


class RunMismatchError(ValueError):
  """The workdir holds work of a run with another identity."""


@contextlib.contextmanager
def policy(mismatch: str | None = None, *, force: bool = False,
           events: dict | None = None) -> Iterator[None]:
  """Within: ``mismatch`` ("error" or "restart") for workdirs of another identity; with
  ``force`` a complete run is run again (in place); ``events`` receives ``skipped``
  and calls ``events["on_start"]()`` (if given) when work starts."""
  if mismatch not in (None, "error", "restart"):
    raise ValueError(f"on_mismatch must be 'error' or 'restart', got {mismatch!r}")
  tokens = [(on_mismatch, on_mismatch.set(mismatch or on_mismatch.get())),
            (_force, _force.set(force)), (_events, _events.set(events))]
  try:
    yield
  finally:
    for var, tok in reversed(tokens):
      var.reset(tok)


def _read_json(path: str) -> dict | None:
  try:
    with paths.open(path) as f:
      value = json.load(f)
    return value if isinstance(value, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


def holds_work(workdir: str) -> bool:
  """True if ``workdir`` holds files a run made (markers, configs and temporaries aside)."""
  for root, _, files in paths.walk(workdir):
    for name in files:
      if root == workdir and name in _NOT_WORK:
        continue
      if name == "spec.json" or name.endswith(".tmp"):
        continue
      return True
  return False


def clear(workdir: str) -> None:
  """Removes a workdir's contents (its lock and gin configs kept)."""
  for name in paths.listdir(workdir):
    if name in _KEEP:
      continue
    path = paths.join(workdir, name)
    if paths.isdir(path) and not os.path.islink(path):
      paths.rmtree(path)
    else:
      paths.remove(path)


def _stale(name: str) -> bool:
  return (name.endswith(".tmp") or ".tmp." in name or "orbax-checkpoint-tmp" in name
          or name.startswith("incomplete."))


def clean_temporaries(workdir: str) -> list[str]:
  """Removes temporaries a killed run left under ``workdir``; returns them."""
  gone = []
  for root, dirs, files in paths.walk(workdir):
    for name in [d for d in dirs if _stale(d)] + [f for f in files if _stale(f)]:
      path = paths.join(root, name)
      if paths.isdir(path):
        try:
          paths.rmtree(path)
        except OSError:
          pass
      else:
        paths.remove(path)
      gone.append(paths.relpath(path, workdir))
    dirs[:] = [d for d in dirs if not _stale(d)]
  if gone:
    _log.info("%s: removed %d stale temporaries (%s)", workdir, len(gone), ", ".join(gone[:4]))
  return gone


def _result_entry(workdir: str, result: Any) -> dict:
  if isinstance(result, str) and paths.exists(result):
    path = paths.absolute(result)
    rel = paths.relpath(path, workdir)
    return {"result_path": path if rel.startswith("..") else rel,
            "result_id": identity.content_id(path)}
  try:
    json.dumps(result)
    return {"result": result}
  except (TypeError, ValueError):
    return {}


def _recorded(workdir: str, done: dict) -> tuple[bool, Any]:
  """(intact, result) of a DONE record: its result path exists with the same content."""
  if "result_path" not in done:
    return True, done.get("result")
  path = paths.join(workdir, done["result_path"])
  try:
    return identity.content_id(path) == done.get("result_id"), path
  except FileNotFoundError:
    return False, path


def _mismatch(workdir: str, name: str, ident: dict, old: dict | None) -> None:
  diff = identity.differences(old or {}, ident) if old else ["(no identity recorded)"]
  if on_mismatch.get() == "restart":
    _log.warning("%s: %s holds a run of another configuration (differs in %s): clearing it "
                 "and starting over", name, workdir, diff)
    if jax.process_index() == 0:
      clear(workdir)
    return
  raise RunMismatchError(
      f"{name}: {workdir} holds a run of another configuration (differs in {diff}); use a "
      "new workdir, or rerun with --restart (gin: run.restart = True) to delete its "
      "outputs and start over")


def _prepare(workdir: str, name: str, ident: dict) -> tuple[bool, Any]:
  """Decides skip / resume / restart (see the module docstring); (skip, result)."""
  done = _read_json(paths.join(workdir, workdir_lib.DONE_FILE))
  run = _read_json(paths.join(workdir, RUN_FILE))
  if done is not None and done.get("run") == ident["hash"] and not _force.get():
    intact, result = _recorded(workdir, done)
    if intact:
      return True, result
    _log.warning("%s: the recorded output %s is missing or changed; running again", name,
                 result)
  if done is not None and (_force.get() or done.get("run") == ident["hash"]):
    paths.remove(paths.join(workdir, workdir_lib.DONE_FILE))
    done = None
  same = (run or {}).get("hash") == ident["hash"] and done is None
  if not same and holds_work(workdir):
    _mismatch(workdir, name, ident, run or None)
  return False, None


def program(name: str, *, inputs: Iterable[str] = (), cosmetic: Iterable[str] = (),
            marks_done: bool = False,
            checks_extra: dict[str, Callable[[Any], str | None]] | None = None):
  """Decorator making ``fn(workdir, **args)`` a run with an identity (module docstring).

  Args:
    name: the program's name (errors, logs, the identity).
    inputs: argument names that are input paths (``name?``: optional); hashed.
    cosmetic: argument names that do not change the result (cadences, mesh shape).
    marks_done: the program calls ``workdir.mark_done`` when it is complete (it may also
      return early, e.g. after ``max_shards``); otherwise returning means complete.
    checks_extra: range checks beyond ``run.checks.RANGES``.
  """
  inputs, cosmetic = tuple(inputs), tuple(cosmetic)

  def wrap(fn: Callable) -> Callable:
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(workdir: str, **kwargs):
      bound = sig.bind(workdir, **kwargs)
      bound.apply_defaults()
      args = {k: v for k, v in bound.arguments.items() if k != "workdir"}
      checks.check_arguments(name, fn, args, extra=checks_extra)
      for value in args.values():   # e.g. optimizer=@pm/make_optimizer: its bindings too
        ref = identity.gin_reference(value) if callable(value) else None
        if ref is not None:
          checks.check_arguments(ref[0], getattr(ref[1], "__wrapped__", ref[1]),
                                 identity.gin_bindings(ref[2]))
      workdir = paths.absolute(workdir)
      if workdir in workdir_lib.OWNED:   # nested inside the program that owns this workdir
        return fn(workdir, **kwargs)
      ident = identity.fingerprint(name, args, inputs=inputs, cosmetic=cosmetic)
      chief = jax.process_index() == 0
      events = _events.get()
      with (WorkdirLock(workdir, name) if chief else contextlib.nullcontext()):
        skip, result = _prepare(workdir, name, ident)
        if skip:
          _log.info("%s: %s is complete, skipping", name, workdir)
          if events is not None:
            events["skipped"] = True
          return result
        if events is not None and events.get("on_start"):
          events["on_start"]()
        if chief:
          clean_temporaries(workdir)
          workdir_lib.write_json(paths.join(workdir, RUN_FILE), ident)
        workdir_lib.OWNED[workdir] = {"summary": "", "marked": False}
        try:
          result = fn(workdir, **kwargs)
        finally:
          state = workdir_lib.OWNED.pop(workdir)
        if chief and (state["marked"] or not marks_done):
          workdir_lib.write_json(paths.join(workdir, workdir_lib.DONE_FILE), {
              "program": name, "run": ident["hash"], "summary": state["summary"].strip(),
              **_result_entry(workdir, result)})
        return result

    run.cai_program = name
    return run
  return wrap


# Arguments of the programs that never change their result.
COSMETIC = ("mesh_shape", "ckpt_every", "log_every", "keep_checkpoints", "hf_export",
            "max_shards")
