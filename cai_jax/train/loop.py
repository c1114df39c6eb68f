"""The shared training loop: step, log, checkpoint, NaN guard, progress bar.

Programs build the state, step function and data iterator, restore or initialise
(resume order: the program's own workdir checkpoint > an init checkpoint >
scratch), then hand over to ``train_loop``.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterator

import gin
import jax
import numpy as np
import tqdm

from cai_jax.train import faults
from cai_jax.train.metrics import MetricsWriter
from cai_jax.train.state import TrainState

_log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  """Raised when the loss or gradients stop being finite."""


class DivergenceError(FloatingPointError):
  """Raised when training diverged without producing NaN (see ``DivergenceGuard``)."""


@gin.configurable
class DivergenceGuard:
  """Stops a run that diverged while staying finite.

  Two signs, both seen in practice with a far too large learning rate (the parameter norm
  jumps by orders of magnitude, then the network is dead: every gradient exactly zero and
  the loss stuck at its chance value):

  * the parameter norm grows past ``max_norm_growth`` times its value at the run's first
    step;
  * the gradient norm is exactly zero for ``zero_grad_steps`` steps in a row. While such a
    streak lasts no checkpoint is written, so the last one predates it.

  Args:
    max_norm_growth: allowed growth of the parameter norm (0 disables the check).
    zero_grad_steps: consecutive all-zero-gradient steps that stop the run (0 disables).
  """

  def __init__(self, max_norm_growth: float = 100.0, zero_grad_steps: int = 20):
    self.max_norm_growth, self.zero_grad_steps = max_norm_growth, zero_grad_steps
    self.first_norm: float | None = None
    self.zero_streak = 0

  def check(self, step: int, m: dict, last_ckpt: int | None) -> None:
    """Raises ``DivergenceError`` for the metrics ``m`` of ``step``."""
    norm, grad = float(m.get("param_norm", 0.0)), float(m.get("grad_norm", 1.0))
    keep = f"the last checkpoint ({last_ckpt}) is kept"
    if self.first_norm is None:
      self.first_norm = max(norm, 1e-6)
    if self.max_norm_growth and norm > self.max_norm_growth * self.first_norm:
      raise DivergenceError(
          f"diverged at step {step}: the parameter norm grew from {self.first_norm:.4g} to "
          f"{norm:.4g} (more than {self.max_norm_growth:g}x; loss {float(m['loss']):.4g}); "
          f"lower the learning rate. {keep}")
    self.zero_streak = self.zero_streak + 1 if grad == 0.0 else 0
    if self.zero_grad_steps and self.zero_streak >= self.zero_grad_steps:
      raise DivergenceError(
          f"diverged at step {step}: the gradients have been exactly zero for "
          f"{self.zero_streak} steps (loss stuck at {float(m['loss']):.4g}): the model no "
          f"longer learns (a too large learning rate, or data with nothing to learn). {keep}")


def _host(metrics: dict) -> dict:
  return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def train_loop(*, state: TrainState, step_fn: Callable, batches: Iterator[dict],
               num_steps: int, rng: jax.Array, put_batch: Callable[[dict], Any],
               checkpointer: Any = None, writer: MetricsWriter | None = None,
               schedule: Callable[[int], float] | None = None, ckpt_every: int = 0,
               log_every: int = 10, data_state: Callable[[], Any] | None = None,
               metadata: dict | None = None, desc: str = "train",
               guard: DivergenceGuard | None = None) -> TrainState:
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
    guard: divergence checks (default: ``DivergenceGuard()`` with its gin bindings).

  A batch's ``num_truncated`` (examples cut to fit ``seq_len``, from the loaders) is
  not sent to the device: it is logged as ``data/truncated`` (share of examples cut)
  and counted in a warning.

  Raises:
    NonFiniteError: the loss or gradients became NaN/inf; the state was not
      updated and no checkpoint was written after the last good one.
    DivergenceError: see ``DivergenceGuard``.
  """
  start = int(jax.device_get(state.step))
  guard = guard if guard is not None else DivergenceGuard()
  cut = _TruncationCount(desc)
  window: list[dict] = []
  t0 = time.perf_counter()
  bar = tqdm.tqdm(total=num_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                  mininterval=1.0, disable=None)
  for step in range(start, num_steps):
    batch = dict(next(batches))
    n_cut = cut.add(batch.pop("num_truncated", None))
    state, metrics = step_fn(state, put_batch(batch), rng)
    # Blocks every step: on a 2-core CPU, a few dozen multi-device executions with
    # collectives in flight deadlock (fake CPU devices); one at a time never does.
    m = _host(metrics)
    if n_cut is not None:
      m["data/truncated"] = n_cut
    if not bool(m.pop("finite")):
      bar.close()
      raise NonFiniteError(
          f"non-finite loss or gradients at step {step + 1} (loss={float(m['loss'])}, "
          f"grad_norm={float(m['grad_norm'])}); the update was not applied and the last "
          f"checkpoint ({checkpointer.latest_step() if checkpointer else None}) is intact")
    guard.check(step + 1, m, checkpointer.latest_step() if checkpointer else None)
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
    if checkpointer is not None and ((ckpt_every and done % ckpt_every == 0 and
                                      not guard.zero_streak) or done == num_steps):
      save_checkpoint(checkpointer, state, data_state=data_state, metadata=metadata)
    faults.exit_if_due(done)
  bar.close()
  cut.report()
  if checkpointer is not None:
    checkpointer.wait()
  return state


class _TruncationCount:
  """Counts the examples the loaders cut to fit ``seq_len``; warns once, sums up at the end."""

  def __init__(self, desc: str):
    self.desc, self.cut, self.seen, self.warned = desc, 0, 0, False

  def add(self, num_truncated) -> float | None:
    if num_truncated is None:
      return None
    rows = np.asarray(num_truncated) > 0
    self.cut += int(rows.sum())
    self.seen += rows.size
    if rows.any() and not self.warned:
      self.warned = True
      _log.warning("%s: some examples are longer than seq_len and are cut (pairs keep "
                   "their responses and lose the start of their prompt); see "
                   "data/truncated in the metrics", self.desc)
    return float(rows.mean())

  def report(self) -> None:
    if self.cut:
      _log.warning("%s: %d of the %d examples read were cut to fit seq_len", self.desc,
                   self.cut, self.seen)


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
