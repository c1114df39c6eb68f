"""Prefix reuse on a critique -> revision shaped workload (issue 3, item 2).

Each prompt goes through 4 rounds: (1) the prompt -> a response; (2) + a critique
request -> a critique; (3) + a revision request -> a revision; (4) + a second
critique request -> a critique. "reuse" keeps the KV cache across rounds and
prefills only each round's new text (``continue_generation``); "re-prefill" calls
``generate`` on the whole conversation every round. Same model, same sampling.

Usage:
  python benchmarks/critique_revise.py --num_prompts 256 --mode both   # the comparison
  python benchmarks/critique_revise.py --num_prompts 2000 --mode both --no_warmup  # full run
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from cai_jax import models, sampling  # noqa: E402

TOY = models.ModelConfig(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                         d_ff=344, tie_embeddings=True, init_std=0.05)
PROMPT_LEN, REQUEST_LEN, NEW = 64, 24, 32
ROUNDS = 4
STOP = 2  # an end-of-turn id; random weights hit it rarely, so lengths stay near NEW


def make_batch(rng: np.random.Generator, n: int):
  """Prompts (ragged around PROMPT_LEN) and three ragged requests per prompt."""
  lens = rng.integers(PROMPT_LEN // 2, PROMPT_LEN + 1, size=n)
  prompts = [rng.integers(3, TOY.vocab_size, size=k).tolist() for k in lens]
  requests = [[rng.integers(3, TOY.vocab_size, size=rng.integers(REQUEST_LEN // 2,
                                                                  REQUEST_LEN + 1)).tolist()
               for _ in range(n)] for _ in range(ROUNDS - 1)]
  return prompts, requests


def run_reuse(sampler: sampling.Sampler, prompts, requests, seed: int) -> int:
  """All rounds on one cache. Returns the number of prefilled (real) tokens."""
  kw = dict(max_new_tokens=NEW, temperature=1.0, stop_tokens=[STOP], keep_state=True)
  out = sampler.generate(prompts, seed=seed, **kw)  # the cache grows round by round
  prefilled = sum(map(len, prompts))
  for r, extra in enumerate(requests):
    out = sampler.continue_generation(out.conversation, extra, seed=seed + r + 1, **kw)
    prefilled += sum(map(len, extra)) + len(extra)  # + each row's pending token
  return prefilled


def run_reprefill(sampler: sampling.Sampler, prompts, requests, seed: int) -> int:
  """Every round re-prefills the whole conversation. Returns prefilled tokens."""
  kw = dict(max_new_tokens=NEW, temperature=1.0, stop_tokens=[STOP])
  history = [list(p) for p in prompts]
  prefilled = 0
  for r in range(ROUNDS):
    if r:
      history = [h + e for h, e in zip(history, requests[r - 1])]
    prefilled += sum(map(len, history))
    out = sampler.generate(history, seed=seed + r, **kw)
    history = [h + t for h, t in zip(history, out.tokens)]
  return prefilled


def run(sampler, mode: str, num_prompts: int, batch: int, *, warmup: bool, seed: int = 0):
  """Runs the workload in batches with a progress bar -> (seconds, prefilled tokens).

  With ``warmup`` the same batches run once untimed first, so every shape bucket is
  compiled outside the timed pass (steady-state comparison); without it the time
  includes compilation.
  """
  rng = np.random.default_rng(seed)
  fn = run_reuse if mode == "reuse" else run_reprefill
  batches = [make_batch(rng, min(batch, num_prompts - i)) for i in range(0, num_prompts, batch)]
  for timed_pass in ((False, True) if warmup else (True,)):
    t0, prefilled = time.perf_counter(), 0
    desc = f"{mode} x{ROUNDS} rounds" + ("" if timed_pass else " (warm-up)")
    for i, (prompts, requests) in enumerate(tqdm(batches, desc=desc, unit="batch")):
      prefilled += fn(sampler, prompts, requests, seed=i * 10)
  return time.perf_counter() - t0, prefilled


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num_prompts", type=int, default=256)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--mode", choices=("reuse", "reprefill", "both"), default="both")
  p.add_argument("--no_warmup", action="store_true", help="time includes compilation")
  args = p.parse_args(argv)
  sampler = sampling.Sampler.from_model(models.build(TOY, seed=0))
  modes = ("reuse", "reprefill") if args.mode == "both" else (args.mode,)
  results = {}
  for mode in modes:
    secs, prefilled = run(sampler, mode, args.num_prompts, args.batch,
                          warmup=not args.no_warmup)
    results[mode] = secs
    print(f"{mode:9s}: {args.num_prompts} prompts x {ROUNDS} rounds in {secs:.1f} s "
          f"({args.num_prompts / secs:.1f} prompts/s), {prefilled} prompt tokens prefilled",
          flush=True)
  if len(results) == 2:
    print(f"re-prefill / reuse time = {results['reprefill'] / results['reuse']:.2f}x "
          f"(saving {1 - results['reuse'] / results['reprefill']:.0%} of wall time)")


if __name__ == "__main__":
  main()
