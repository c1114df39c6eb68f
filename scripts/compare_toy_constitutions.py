#!/usr/bin/env python3
"""Side by side: the oracle metrics of two toy-world runs (e.g. the main command with
constitutions/toy.json and experiments/toy_world_collective.gin), from their eval phases'
``results.json``, plus the oracle's answer styles split by harmful / benign requests
(re-scored from ``answers.jsonl``; evaluation only). Prints markdown tables; a run given
as several workdirs (one per seed) shows mean ± sample sd and its answer styles summed.

  python scripts/compare_toy_constitutions.py --run toy.json=runs/toy_world \\
      --run collective=runs/toy_world_collective
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics

from cai_jax.toyworld import oracle
from cai_jax.toyworld.phases import read_requests

METRICS = ("harm_rate", "helpfulness", "evasive", "explained_refusal", "over_refusal",
           "incoherent", "utility")
HARMS = ("break_in", "poison", "violence", "harassment", "privacy")
STYLES = ("comply", "partial", "refuse_explain", "refuse_flat", "incoherent", "off_topic")


def _row(cells) -> str:
  return "| " + " | ".join(map(str, cells)) + " |"


def _fmt(values: list[float]) -> str:
  """One value, or mean +- sample sd of several (one per seed)."""
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _styles(root: str, phase: str) -> dict[bool, collections.Counter]:
  """Oracle styles of a phase's answers, split by harmful (True) / benign (False)."""
  requests = read_requests(os.path.join(root, "data", "eval.jsonl"))
  with open(os.path.join(root, phase, "answers.jsonl"), encoding="utf-8") as f:
    answers = [json.loads(line)["answer"] for line in f]
  count = {True: collections.Counter(), False: collections.Counter()}
  for r, a in zip(requests, answers):
    count[r.harmful][oracle.score(r, a).style] += 1
  return count


def tables(runs: list[tuple[str, list[str]]], phases: list[str]) -> str:
  """The metric table, the per-category harm table and the style table (markdown); a run
  of several workdirs (seeds) shows mean ± sd and its styles summed."""
  head = ["phase", "run"]
  out = [_row(head + list(METRICS)), _row(["---"] * (len(head) + len(METRICS)))]
  cats = [_row(head + [c + (" (blind spot)" if c == "privacy" else "") for c in HARMS]),
          _row(["---"] * (len(head) + len(HARMS)))]
  styles = [_row(head + [f"harmful: {s}" for s in STYLES] + [f"benign: {s}" for s in STYLES]),
            _row(["---"] * (len(head) + 2 * len(STYLES)))]
  for phase in phases:
    for name, roots in runs:
      paths = [os.path.join(r, phase, "results.json") for r in roots]
      if not all(os.path.isfile(p) for p in paths):
        continue
      res = []
      for path in paths:
        with open(path, encoding="utf-8") as f:
          res.append(json.load(f))
      out.append(_row([phase, name] + [_fmt([r[m] for r in res]) for m in METRICS]))
      cats.append(_row([phase, name] + [
          _fmt([r["categories"][c]["harm_rate"] for r in res]) for c in HARMS]))
      count = {True: collections.Counter(), False: collections.Counter()}
      for root in roots:
        for harmful, c in _styles(root, phase).items():
          count[harmful].update(c)
      styles.append(_row([phase, name] + [count[True][s] for s in STYLES]
                         + [count[False][s] for s in STYLES]))
  return "\n".join(out + [""] + cats + [""] + styles)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  ap.add_argument("--run", action="append", required=True,
                  help="NAME=WORKDIR[,WORKDIR...] (several: seeds, mean ± sd)")
  ap.add_argument("--phases", default="eval_sl_cai,eval_ppo,eval_dpo")
  args = ap.parse_args()
  runs = [(r.split("=", 1)[0], r.split("=", 1)[1].split(",")) for r in args.run]
  print(tables(runs, args.phases.split(",")))


if __name__ == "__main__":
  main()
