"""Measuring a guard on traffic: answers with and without it, thresholds, timings.

The pieces the guard evaluations share (``programs.classifiers.guard_eval`` for any
model, the toy world's ``toy_guard_eval`` with its oracle):

* ``GUARDS``: ``input`` (the request only), ``exchange`` (the streaming exchange
  classifier) and ``input+exchange``; ``make_guard`` builds one;
* ``calibrate``: the input and output thresholds that refuse at most ``rate / 2`` each of
  benign prompts (answered by the policy), from ``benign_prompts`` of a classifier-data
  JSONL (its rows with label 0 in the plain shape);
* ``unguarded`` / ``guarded``: greedy answers in batches, each traffic set timed on a
  second pass (the first compiles every shape), so the two times compare; ``warmup=False``
  (tests) runs one pass, whose time includes compilation.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from cai_jax.classifiers.guard import GuardedSampler, threshold_for_false_refusal_rate
from cai_jax.classifiers.streaming import StreamingClassifier
from cai_jax.data.conversations import parse_prompt_row, read_jsonl
from cai_jax.data.dialogue import parse_hh
from cai_jax.models.store import SavedModel
from cai_jax.sampling import Sampler

GUARDS = ("input", "exchange", "input+exchange")
NEVER = 2.0   # a threshold no probability reaches: the guard scores, never blocks


def timed_batches(fn: Callable, prompts: Sequence, batch_size: int) -> tuple[list, float]:
  """fn over batches of prompts -> (outputs per batch, seconds)."""
  start, out = time.perf_counter(), []
  for i in range(0, len(prompts), batch_size):
    out.append(fn(prompts[i:i + batch_size]))
  return out, time.perf_counter() - start


def unguarded(sampler: Sampler, tok, prompts, *, batch_size: int, max_new_tokens: int,
              warmup: bool = True) -> tuple[list[str], float]:
  """(greedy answers, seconds of the second pass; of the only one without ``warmup``)."""
  gen = lambda p: sampler.generate(  # noqa: E731
      p, max_new_tokens=max_new_tokens, stop_tokens=tok.stop_ids).tokens
  if warmup:
    timed_batches(gen, prompts, batch_size)
  outs, secs = timed_batches(gen, prompts, batch_size)
  return [tok.decode_generated(t) for o in outs for t in o], secs


def guarded(guard: GuardedSampler, tok, prompts, *, batch_size: int, max_new_tokens: int,
            warmup: bool = True) -> tuple[list[str], list[str], list[dict], float]:
  """(answers, text generated before a block, reports with ``input_score``, seconds of
  the second pass; of the only one without ``warmup``)."""
  gen = lambda p: guard.generate(  # noqa: E731
      p, max_new_tokens=max_new_tokens, stop_tokens=tok.stop_ids)
  if warmup:
    timed_batches(gen, prompts, batch_size)
  outs, secs = timed_batches(gen, prompts, batch_size)
  answers = [tok.decode_generated(t) for o in outs for t in o.tokens]
  shown = [tok.decode_generated(t) for o in outs for t in o.generated]
  reports = [dict(r, input_score=s) for o in outs
             for r, s in zip(o.reports, o.input_scores)]
  return answers, shown, reports, secs


def make_guard(sampler: Sampler, clfs: dict[str, StreamingClassifier], guard: str,
               thresholds: dict[str, float], *, check_every: int,
               refusal: Sequence[int]) -> GuardedSampler:
  """The guard ``guard`` (one of ``GUARDS``) with ``clfs["input"]`` / ``clfs["exchange"]``."""
  if guard not in GUARDS:
    raise ValueError(f"unknown guard {guard!r}; known: {GUARDS}")
  use_in, use_out = "input" in guard, "exchange" in guard
  return GuardedSampler(
      sampler, clfs["exchange"] if use_out else None, clfs["input"] if use_in else None,
      threshold=thresholds["output"] if use_out else NEVER,
      input_threshold=thresholds["input"] if use_in else NEVER,
      check_every=check_every, mode="exchange", refusal_tokens=refusal)


def calibrate(sampler: Sampler, tok, clfs: dict[str, StreamingClassifier], prompts, *,
              rate: float, check_every: int, batch_size: int, max_new_tokens: int) -> dict:
  """Input and output thresholds refusing at most ``rate / 2`` each of ``prompts``
  (benign token-id prompts, answered greedily by the policy)."""
  probe = GuardedSampler(sampler, clfs["exchange"], clfs["input"], threshold=NEVER,
                         input_threshold=NEVER, check_every=check_every, mode="exchange")
  outs, _ = timed_batches(lambda p: probe.generate(p, max_new_tokens=max_new_tokens,
                                                   stop_tokens=tok.stop_ids),
                          prompts, batch_size)
  in_scores = [s for o in outs for s in o.input_scores]
  out_scores = [r["max_score"] for o in outs for r in o.reports]
  return {"input": threshold_for_false_refusal_rate(in_scores, rate / 2),
          "output": threshold_for_false_refusal_rate(out_scores, rate / 2),
          "calibration_prompts": len(prompts)}


def _calibration_row(obj: dict) -> dict:
  row = parse_prompt_row({k: obj[k] for k in ("prompt", "text", "id") if k in obj})
  return {**row, "label": obj.get("label", 0), "transform": obj.get("transform", "none")}


def benign_prompts(path: str, limit: int) -> list:
  """Up to ``limit`` distinct benign plain-shape prompts (turns) of a classifier JSONL."""
  seen, out = set(), []
  for row in read_jsonl(path, _calibration_row):
    if row["label"] < 0.5 and row["transform"] == "none" and row["prompt"] not in seen:
      seen.add(row["prompt"])
      out.append(parse_hh(row["prompt"]))
  if not out:
    raise ValueError(f"calibration prompts: {path} has no benign row (label 0) in the "
                     "plain shape")
  return out[:limit]


def check_thresholds(thresholds, calibration_prompts, where: str) -> None:
  """Exactly one of fixed thresholds ({"input", "output"}) and calibration prompts."""
  if (calibration_prompts is None) == (thresholds is None):
    raise ValueError(f"{where}: give calibration_prompts or fixed thresholds (one)")
  if thresholds is not None and set(thresholds) != {"input", "output"}:
    raise ValueError(f"{where}.thresholds must have the keys 'input' and 'output', "
                     f"got {sorted(thresholds)}")


def load_classifiers(input_classifier: str, exchange_classifier: str, where: str
                     ) -> dict[str, StreamingClassifier]:
  """{"input", "exchange"}: saved ``train_classifier`` models, each of its kind."""
  clfs = {}
  for kind, path in (("input", input_classifier), ("exchange", exchange_classifier)):
    saved = SavedModel.open(path, role=f"{where}.{kind}_classifier")
    if saved.info.get("classifier") != kind:
      raise ValueError(f"{where}.{kind}_classifier: {path} is a "
                       f"{saved.info.get('classifier')!r} classifier, not {kind!r}")
    clfs[kind] = StreamingClassifier.load(saved)
  return clfs
