"""Metric writers: JSONL (one object per line), TensorBoard (through ``tensorboardX``) and,
optionally, Weights & Biases.

``MetricsWriter`` logs scalars (``write``), text summaries (``text``) and a run's
hyperparameters (``hparams``, shown side by side across runs in TensorBoard's HParams
dashboard). Only process 0 writes; on the other processes every method is a no-op that
still keeps ``rows`` (so ``logged`` answers the same on every host).
"""
from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Mapping, Sequence

import gin
import jax
import numpy as np

from cai_jax import paths

_SEQ = itertools.count()   # event file names are unique within a process
_SYNC_SECS = 10.0   # a remote logdir gets the new rows and events at most this often


def _to_float(v: Any) -> float | None:
  try:
    x = float(np.asarray(v))
  except (TypeError, ValueError):
    return None
  return x


def flatten_hparams(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``params`` as one flat dict of str/float/int/bool values: nested mappings (and
  dataclasses) become ``outer/inner`` keys, numpy scalars Python numbers, anything else
  (None, lists, callables) its ``str``."""
  out: dict[str, Any] = {}
  for key, value in params.items():
    name = f"{prefix}{key}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
      value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
      out.update(flatten_hparams(value, name + "/"))
    elif isinstance(value, (bool, int, float, str)):
      out[name] = value
    elif isinstance(value, np.generic) and np.ndim(value) == 0:
      out[name] = value.item()
    else:
      out[name] = str(value)
  return out


@gin.configurable
def logging_backends(*, wandb_project: str | None = None) -> dict[str, Any]:
  """The optional backends every ``MetricsWriter`` of a run logs to, set in gin, e.g.
  ``logging_backends.wandb_project = 'cai'`` (Weights & Biases; needs ``pip install
  wandb``)."""
  return {"wandb_project": wandb_project}


def _import_wandb():
  try:
    return importlib.import_module("wandb")
  except ImportError as e:
    raise ImportError("MetricsWriter(wandb_project=...) logs to Weights & Biases, which is "
                      "not installed; run `pip install wandb` (or leave wandb_project "
                      "unset)") from e


class MetricsWriter:
  """Appends metrics to ``{logdir}/metrics.jsonl`` and TensorBoard event files in ``logdir``
  (and a Weights & Biases run with ``wandb_project``).

  Non-numeric values are kept in the JSONL only. Call it at the log interval, not every
  step; TensorBoard events are written by ``tensorboardX``'s background thread and are all
  on disk after ``close``.

  A resumed run passes ``resume_step`` (the step its state was restored at; 0 for a
  fresh start): rows a killed attempt logged after that step are dropped, so no row is
  written twice, and TensorBoard is told to drop its events after that step too.

  Args:
    logdir: the folder of ``metrics.jsonl`` and the event files.
    tensorboard: also write TensorBoard event files.
    resume_step: see above; None keeps every row.
    process_index: this process (default ``jax.process_index()``); only process 0 writes
      files or logs to Weights & Biases.
    wandb_project: also log to this Weights & Biases project (needs ``pip install wandb``;
      default: ``logging_backends``'s, from gin).
    jsonl: also write ``metrics.jsonl`` (``log_samples`` writes text only).
  """

  def __init__(self, logdir: str, *, tensorboard: bool = True, resume_step: int | None = None,
               process_index: int | None = None, wandb_project: str | None = None,
               jsonl: bool = True):
    if wandb_project is None:
      wandb_project = logging_backends()["wandb_project"]
    wandb = _import_wandb() if wandb_project is not None else None
    if process_index is None:
      process_index = jax.process_index()
    self.logdir, self.active = logdir, process_index == 0
    self.jsonl_path = paths.join(logdir, "metrics.jsonl")
    self.rows: list[dict] = []
    self._jsonl = self._tb = self._wandb = self._staging = None
    self._remote_jsonl, self._synced, self._kept = False, 0.0, []
    if resume_step is not None and paths.isfile(self.jsonl_path):
      self.rows = [r for r in _read_rows(self.jsonl_path) if r.get("step", 0) <= resume_step]
      if self.active:
        paths.write_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in self.rows))
    if not self.active:
      return
    paths.makedirs(logdir)
    # A remote logdir (gs://...): metrics.jsonl is rewritten there whole (object stores
    # do not append), and the event files (and wandb's) are written to a local staging
    # folder and copied over (tensorboardX needs extra packages to write to gs://).
    local_dir = logdir
    if not paths.is_local(logdir):
      self._staging = local_dir = tempfile.mkdtemp(prefix="cai_jax_metrics_")
      self._remote_jsonl = jsonl
      if jsonl and resume_step is None and paths.isfile(self.jsonl_path):
        self._kept = _read_rows(self.jsonl_path)   # what appending would have kept
    elif jsonl:
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter   # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(
          local_dir, flush_secs=10, filename_suffix=f".{os.getpid()}.{next(_SEQ):04d}",
          purge_step=None if resume_step is None else resume_step + 1)
    if wandb is not None:
      self._wandb = wandb.init(project=wandb_project, dir=local_dir,
                               name=paths.basename(os.path.normpath(logdir)
                                                   if paths.is_local(logdir) else logdir))

  def _sync(self, force: bool = False) -> None:
    """Copies the rows and the staged event files to a remote logdir (at most every
    ``_SYNC_SECS`` unless ``force``)."""
    if self._staging is None or (not force and time.time() - self._synced < _SYNC_SECS):
      return
    self._synced = time.time()
    if self._remote_jsonl:
      paths.write_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n"
                                                  for r in self._kept + self.rows))
    for name in sorted(os.listdir(self._staging)):
      if name.startswith("events.out.tfevents"):
        paths.copy(os.path.join(self._staging, name), paths.join(self.logdir, name))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """One row of ``metrics`` at ``step``; the numeric ones also go to TensorBoard."""
    row = {"step": int(step)}
    scalars = {}
    for k, v in metrics.items():
      x = _to_float(v)
      if x is None:
        row[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
      else:
        row[k] = x if math.isfinite(x) else str(x)
        scalars[k] = x
    self.rows.append(row)
    if not self.active:
      return
    if self._jsonl is not None:
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
    if self._tb is not None and scalars:
      for k, x in scalars.items():
        self._tb.add_scalar(k, x, int(step))
      self._tb.flush()
    if self._wandb is not None and scalars:
      self._wandb.log(scalars, step=int(step))
    self._sync()

  def text(self, step: int, tag: str, text: str) -> None:
    """A text summary (Markdown in TensorBoard's Text dashboard) at ``step``."""
    if not self.active:
      return
    if self._tb is not None:
      self._tb.add_text(tag, str(text), int(step))
      self._tb.flush()
      self._sync()
    if self._wandb is not None:
      self._wandb.log({tag: str(text)}, step=int(step))

  def hparams(self, params: Mapping[str, Any]) -> None:
    """Records the run's hyperparameters (flattened by ``flatten_hparams``) for
    TensorBoard's HParams dashboard, whose metrics are this run's scalars, and as the
    Weights & Biases run config."""
    if not self.active:
      return
    flat = flatten_hparams(params)
    if self._tb is not None:
      from tensorboardX.summary import hparams   # pylint: disable=import-outside-toplevel
      # Only the session start info: with no experiment summary, TensorBoard infers the
      # experiment (hparams and metrics) from every run's, so ablations line up.
      _, session_start, _ = hparams(flat, {})
      self._tb.file_writer.add_summary(session_start, 0)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.config.update(flat, allow_val_change=True)

  def logged(self, step: int, prefix: str) -> bool:
    """True if a row of ``step`` holds a metric whose name starts with ``prefix``."""
    return any(r.get("step") == step and any(k.startswith(prefix) for k in r)
               for r in self.rows)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
    if self._staging is not None:
      self._sync(force=True)
      shutil.rmtree(self._staging, ignore_errors=True)
    self._jsonl = self._tb = self._wandb = self._staging = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def log_samples(logdir: str, tag: str, samples: Sequence[str], *,
                process_index: int | None = None) -> None:
  """Text summaries of a program's samples (SL-CAI chains, judge decisions), one per step
  0, 1, ..., in ``logdir``'s TensorBoard events (and Weights & Biases when on); nothing in
  ``metrics.jsonl``."""
  with MetricsWriter(logdir, process_index=process_index, jsonl=False) as w:
    for i, text in enumerate(samples):
      w.text(i, tag, text)


def _read_rows(path: str) -> list[dict]:
  """The rows of a metrics file; a line cut by a kill (the last one) is dropped."""
  rows = []
  with paths.open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def read_jsonl(path: str) -> list[dict]:
  with paths.open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
