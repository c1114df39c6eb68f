"""The shared training loop: step, log, checkpoint, NaN guard, progress bar.

Programs build the state, step function and data iterator, restore or initialise
(resume order: the program's own workdir checkpoint > an init checkpoint >
scratch), then hand over to ``train_loop``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Iterator

import gin
import jax
import numpy as np
import tqdm

from cai_jax.train.metrics import MetricsWriter
from cai_jax.train.state import TrainState

_log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  """Raised when the loss or gradients stop being finite."""


def _host(metrics: dict) -> dict:
  return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def train_loop(*, state: TrainState, step_fn: Callable, batches: Iterator[dict],
               num_steps: int, rng: jax.Array, put_batch: Callable[[dict], Any],
               checkpointer: Any = None, writer: MetricsWriter | None = None,
               schedule: Callable[[int], float] | None = None, ckpt_every: int = 0,
               log_every: int = 10, data_state: Callable[[], Any] | None = None,
               metadata: dict | None = None, desc: str = "train") -> TrainState:
  """Runs ``step_fn`` until ``state.step == num_steps``.

  Args:
    state: the (restored or fresh) state; its ``step`` says where to start.
    step_fn: jitted ``(state, batch, rng) -> (state, metrics)``.
    batches: iterator of host batches (dicts of numpy arrays), positioned to
      continue at ``state.step``.
    num_steps: total number of steps of the run (not steps left).
    rng: the run's base key (the step folds in the step number).
    put_batch: host batch -> device arrays with the batch shardings.
    checkpointer: a ``cai_jax.train.checkpoint.Checkpointer`` or None.
    writer: metrics writer or None.
    schedule: learning-rate schedule, logged as ``lr``.
    ckpt_every: save every this many steps (0: only at the end).
    log_every: write averaged metrics every this many steps.
    data_state: returns the data iterator's state to store with checkpoints.
    metadata: extra JSON metadata saved with every checkpoint.
    desc: progress bar label.

  Raises:
    NonFiniteError: the loss or gradients became NaN/inf; the state was not
      updated and no checkpoint was written after the last good one.
  """
  start = int(jax.device_get(state.step))
  # Fault injection for resume tests: die abruptly (no cleanup, like SIGKILL) after
  # this step, possibly while an async checkpoint is still being written.
  exit_after = int(os.environ.get("CAI_JAX_FAULT_EXIT_AFTER_STEP", "0"))
  window: list[dict] = []
  t0 = time.perf_counter()
  bar = tqdm.tqdm(total=num_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                  mininterval=1.0, disable=None)
  for step in range(start, num_steps):
    batch = next(batches)
    state, metrics = step_fn(state, put_batch(batch), rng)
    m = _host(metrics)  # blocks every step: see ENVIRONMENT.md §3 (CPU collectives)
    if not bool(m.pop("finite")):
      bar.close()
      raise NonFiniteError(
          f"non-finite loss or gradients at step {step + 1} (loss={float(m['loss'])}, "
          f"grad_norm={float(m['grad_norm'])}); the update was not applied and the last "
          f"checkpoint ({checkpointer.latest_step() if checkpointer else None}) is intact")
    window.append(m)
    done = step + 1
    bar.update(1)
    bar.set_postfix(loss=f"{float(m['loss']):.4f}", refresh=False)
    if writer is not None and (done % log_every == 0 or done == num_steps):
      avg = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
      dt = time.perf_counter() - t0
      avg["steps_per_sec"] = len(window) / max(dt, 1e-9)
      if schedule is not None:
        avg["lr"] = float(schedule(done - 1))
      writer.write(done, avg)
      window, t0 = [], time.perf_counter()
    if checkpointer is not None and ((ckpt_every and done % ckpt_every == 0)
                                     or done == num_steps):
      save_checkpoint(checkpointer, state, data_state=data_state, metadata=metadata)
    if exit_after and done == exit_after:
      os._exit(17)  # pylint: disable=protected-access
  bar.close()
  if checkpointer is not None:
    checkpointer.wait()
  return state


def save_checkpoint(checkpointer: Any, state: TrainState, *,
                    data_state: Callable[[], Any] | None = None,
                    metadata: dict | None = None) -> None:
  """Saves ``state`` with the operative gin config and the data iterator state."""
  step = int(jax.device_get(state.step))
  meta = dict(metadata or {})
  meta["step"] = step
  meta["gin_operative_config"] = gin.operative_config_str()
  if data_state is not None:
    meta["data_state"] = json.loads(json.dumps(data_state(), default=_json_default))
  _log.info("saving checkpoint at step %d", step)
  checkpointer.save(step, state, metadata=meta, force=True)


def _json_default(x):
  if isinstance(x, bytes):
    return x.decode("latin-1")
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"cannot store {type(x)} in checkpoint metadata")
