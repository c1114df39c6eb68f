"""Argument checks before work: types from the annotations, ranges from one table.

``check_arguments(name, fn, args)`` checks every argument of a program (or of a gin
factory such as ``make_optimizer``) against its annotation (``int`` takes no float, bool
or str; ``float`` takes ints; ``str | None``, tuples, sequences, mappings, callables) and
against ``RANGES``, keyed by argument name, so ``kl_coef`` means the same in every
program. A program adds its own with ``extra``. Errors name ``program.argument``, the
value and what is expected, before any work starts.
"""
from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import numbers
import types
import typing
from typing import Any, Callable, Mapping


def _at_least(lo: float, strict: bool = False) -> Callable[[Any], str | None]:
  def check(v):
    return None if (v > lo if strict else v >= lo) else (
        f"must be {'>' if strict else '>='} {lo}")
  return check


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
  def check(v):
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return None if ok else (f"must be in {'(' if lo_open else '['}{lo}, {hi}"
                            f"{')' if hi_open else ']'}")
  return check


_POS, _NONNEG, _PROB = _at_least(0, strict=True), _at_least(0), _between(0.0, 1.0)
RANGES: dict[str, Callable[[Any], str | None]] = {
    **{k: _POS for k in ("num_steps", "batch_size", "seq_len", "log_every",
                         "keep_checkpoints", "max_new_tokens", "shard_size",
                         "num_iterations", "rollouts_per_iteration", "ppo_epochs",
                         "minibatch_size", "total_steps", "learning_rate", "beta",
                         "vocab_size", "samples_per_prompt", "max_prompts", "rollout_batch", "num_principles",
                         "kl_horizon", "kl_target")},
    **{k: _NONNEG for k in ("ckpt_every", "eval_every", "num_rounds", "warmup_steps",
                            "kl_coef", "temperature", "weight_decay", "probe_every",
                            "entropy_coef", "value_coef", "clip_norm", "top_k",
                            "label_smoothing", "max_shards", "seed")},
    "top_p": _between(0.0, 1.0, lo_open=True),
    "eval_fraction": _between(0.0, 1.0, hi_open=True),
    "helpful_ratio": _NONNEG, "end_ratio": _PROB, "b1": _between(0.0, 1.0, hi_open=True),
    "b2": _between(0.0, 1.0, hi_open=True), "eps": _POS,
    "clip_eps": _POS, "value_clip": _NONNEG, "lam": _PROB, "gamma": _PROB, "vf_coef": _NONNEG,
}


def _hints(fn: Callable) -> dict[str, Any]:
  try:
    return typing.get_type_hints(fn)
  except Exception:  # pylint: disable=broad-except   # unresolvable annotation: no check
    return {}


hints = functools.lru_cache(maxsize=None)(_hints)


def _matches(value: Any, tp: Any) -> bool:
  """Whether ``value`` fits the annotation ``tp`` (unknown annotations fit anything)."""
  if tp is Any or tp is typing.Any:
    return True
  if tp is type(None) or tp is None:
    return value is None
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, a) for a in typing.get_args(tp))
  if tp is bool:
    return isinstance(value, bool)
  if tp is int:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if tp is float:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  if tp is str:
    return isinstance(value, str)
  if origin is tuple:
    args = typing.get_args(tp)
    if not isinstance(value, (tuple, list)):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_matches(v, args[0]) for v in value)
    return not args or (len(args) == len(value) and all(map(_matches, value, args)))
  if origin in (list, cabc.Sequence):
    return isinstance(value, (list, tuple)) and all(
        _matches(v, (typing.get_args(tp) or (Any,))[0]) for v in value)
  if origin in (dict, cabc.Mapping):
    return isinstance(value, Mapping)
  if origin is cabc.Callable or tp is Callable:
    return callable(value)
  if isinstance(tp, type):
    return isinstance(value, tp)
  return True


def _describe(tp: Any) -> str:
  return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_arguments(name: str, fn: Callable, args: Mapping[str, Any], *,
                    extra: Mapping[str, Callable[[Any], str | None]] | None = None) -> None:
  """Checks ``args`` (by name) against ``fn``'s annotations and the range table.

  Raises:
    TypeError: a value of the wrong type (``sft.num_steps='40'``).
    ValueError: a value out of range (``ppo.kl_coef=-0.05``).
  """
  annotations = hints(fn)
  ranges = {**RANGES, **(extra or {})}
  for key, value in args.items():
    tp = annotations.get(key)
    if tp is not None and not _matches(value, tp):
      raise TypeError(f"{name}.{key}={value!r}: expected {_describe(tp)}, got "
                      f"{type(value).__name__}")
    check = ranges.get(key)
    if check is not None and isinstance(value, numbers.Real) and not isinstance(value, bool):
      problem = check(value)
      if problem:
        raise ValueError(f"{name}.{key}={value!r}: {problem}")


def checked(name: str, **extra: Callable[[Any], str | None]):
  """Decorator: checks a factory's arguments (e.g. ``make_optimizer``) on every call."""
  def wrap(fn):
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*a, **kw):
      bound = sig.bind(*a, **kw)
      bound.apply_defaults()
      check_arguments(name, fn, bound.arguments, extra=extra)
      return fn(*a, **kw)
    return call
  return wrap
