"""The optax optimizer builder (bound by gin in run files)."""
from __future__ import annotations

from typing import Any

import jax
import optax

from cai_jax.run.checks import checked


def learning_rate_schedule(*, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                           schedule: str = "cosine", end_ratio: float = 0.1) -> optax.Schedule:
  """Linear warm-up, then constant, linear or cosine decay to ``end_ratio * lr``."""
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  warmup_steps = min(warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup_steps, 1)
  end = learning_rate * end_ratio
  if schedule == "constant":
    decay = optax.constant_schedule(learning_rate)
  elif schedule == "linear":
    decay = optax.linear_schedule(learning_rate, end, decay_steps)
  elif schedule == "cosine":
    decay = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=end_ratio)
  else:
    raise ValueError(f"unknown schedule {schedule!r}; expected constant, linear or cosine")
  if warmup_steps == 0:
    return decay
  warm = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warm, decay], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices only: not on norms, biases, scalars or embeddings."""

  def keep(path, x):
    names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    return x.ndim >= 2 and not any(n.startswith("embed") for n in names)

  return jax.tree_util.tree_map_with_path(keep, params)


@checked("make_optimizer")
def make_optimizer(*, total_steps: int, learning_rate: float = 3e-4, warmup_steps: int = 0,
                   schedule: str = "cosine", end_ratio: float = 0.1,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.95,
                   eps: float = 1e-8, clip_norm: float | None = 1.0,
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with global-norm clipping and a warm-up/decay schedule.

  Programs call this with their ``total_steps``; gin binds the rest.

  Returns:
    (optimizer, schedule) so the schedule can be logged.
  """
  sched = learning_rate_schedule(learning_rate=learning_rate, total_steps=total_steps,
                                 warmup_steps=warmup_steps, schedule=schedule,
                                 end_ratio=end_ratio)
  parts = []
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts), sched
