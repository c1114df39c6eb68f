"""A run's folder: the completion marker and atomic writes of small text files.

A program writes its outputs into its workdir and, last, a ``DONE`` marker (JSON: the
program's one-line summary and, for a decorated program, the identity of the run; see
``cai_jax.run.runner``, which decides skip, resume or restart). Files other programs
read are written atomically (to a temporary name in the same folder, flushed to disk,
then renamed), so a killed run never leaves half a file behind. A workdir may be a URL
(``gs://bucket/run``): every path goes through ``cai_jax.paths``, and on an object store
a single object write is already all-or-nothing.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable

from cai_jax import paths

DONE_FILE = "DONE"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_log = logging.getLogger(__name__)
# Workdirs owned by a running decorated program (cai_jax.run.runner): workdir -> state.
OWNED: dict[str, dict] = {}


def is_done(workdir: str) -> bool:
  """True if ``workdir`` holds a completion marker."""
  return paths.isfile(paths.join(workdir, DONE_FILE))


def mark_done(workdir: str, text: str = "") -> None:
  """Marks ``workdir`` complete (``text`` is a one-line summary, e.g. the last step).

  Inside a decorated program that owns ``workdir`` the summary is kept and the decorator
  writes the marker, with the run's identity, after the program returns.
  """
  owner = OWNED.get(paths.absolute(workdir))
  if owner is not None:
    owner.update(summary=text, marked=True)
    return
  write_json(paths.join(workdir, DONE_FILE), {"summary": text.strip()})


def skip_if_done(workdir: str, program: str) -> bool:
  """True (and logs it) if ``program`` already completed in ``workdir``."""
  if is_done(workdir):
    _log.info("%s: %s is complete, skipping", program, workdir)
    return True
  return False


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (creates the folder; see
  ``paths.write_atomic``)."""
  paths.write_atomic(os.fspath(path), text)


def write_json(path: str, value: Any, *, indent: int | None = 2,
               sort_keys: bool = True) -> None:
  """Writes ``value`` as JSON to ``path`` atomically (``sort_keys=False`` keeps the
  dicts' order, e.g. table columns)."""
  write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
  """Writes one JSON object per line to ``path`` atomically."""
  write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_json(path: str) -> Any:
  """Reads a JSON file; a malformed one raises ``ValueError`` naming the path."""
  with paths.open(os.fspath(path)) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None


def resolve_input(path: str) -> str:
  """An input file or folder: ``~`` expanded; a relative path is looked up under a URL
  pipeline root (``paths.relative_root``), then from the cwd, then from the repository
  root (so ``'prompts/red_team.jsonl'`` works from a pipeline's experiment folder). A path
  found nowhere is returned absolute, for its reader to report. A URL (``gs://...``) is
  returned as it is."""
  path = os.path.expanduser(os.fspath(path))
  if not paths.is_local(path):
    return paths.absolute(path)
  found = paths.absolute(path)
  if not paths.is_local(found) or os.path.exists(path) or os.path.isabs(path):
    return found
  candidate = os.path.join(REPO_ROOT, path)
  return candidate if os.path.exists(candidate) else os.path.abspath(path)
