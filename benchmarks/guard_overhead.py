"""Inference overhead of the constitutional-classifier guard (issue 16 item 1).

One run, one machine: the unguarded ``Sampler.generate`` and ``GuardedSampler.generate``
on the same prompts (greedy, no stop token, a threshold no score reaches, so every
variant generates the same tokens), random weights, float32. Prints the median wall time
of each variant and its ratio to the unguarded sampler.

Variants: the guard's decode path with no classifier (its loop cost alone), the input
classifier only, and the exchange / output classifier checked every k tokens, with a
classifier the policy's size and one about a quarter of it.

Usage: python benchmarks/guard_overhead.py [--batch 16] [--prompt 32] [--new 64] [--reps 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cai_jax import models  # noqa: E402
from cai_jax.classifiers import GuardedSampler, StreamingClassifier  # noqa: E402
from cai_jax.sampling import Sampler  # noqa: E402

POLICY = models.ModelConfig(vocab_size=2048, d_model=256, n_layers=4, n_heads=8,
                            n_kv_heads=4, d_ff=1024, max_seq_len=512)
SMALL_CLF = models.ModelConfig(vocab_size=2048, d_model=128, n_layers=2, n_heads=4,
                               n_kv_heads=2, d_ff=512, max_seq_len=512)


def _medians(fns: dict, reps: int) -> dict:
  """Median wall time of each function, timed round-robin (machine noise hits all)."""
  for fn in fns.values():
    fn()
    fn()   # compile, then warm
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--reps", type=int, default=15)
  a = ap.parse_args()
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, POLICY.vocab_size, size=a.prompt).tolist()
             for _ in range(a.batch)]
  sampler = Sampler(*models.init(POLICY, seed=1))
  same = StreamingClassifier(*models.init(POLICY, "scalar", seed=2))
  small = StreamingClassifier(*models.init(SMALL_CLF, "scalar", seed=3))
  kw = dict(max_new_tokens=a.new)
  ref = sampler.generate(prompts, **kw).tokens
  base = "unguarded Sampler.generate"
  fns = {base: lambda: sampler.generate(prompts, **kw)}
  variants = [("guard loop, no classifier", None, None, 1, "exchange")]
  for name, clf in (("same-size", same), ("quarter-size", small)):
    variants += [(f"input only ({name})", None, clf, 1, "exchange")]
    variants += [(f"input + exchange k={k} ({name})", clf, clf, k, "exchange")
                 for k in (1, 8, 16)]
    variants += [(f"output-only k=8 ({name})", clf, None, 8, "output")]
  for label, out_clf, in_clf, k, mode in variants:
    guard = GuardedSampler(sampler, out_clf, in_clf, threshold=2.0, check_every=k,
                           mode=mode)
    assert guard.generate(prompts, **kw).tokens == ref, label
    fns[label] = lambda g=guard: g.generate(prompts, **kw)
  med = _medians(fns, a.reps)
  print(f"device={jax.devices()[0].platform} batch={a.batch} prompt={a.prompt} "
        f"new={a.new} policy d={POLICY.d_model} L={POLICY.n_layers} reps={a.reps}")
  print(f"{'variant':44} {'median s':>9} {'ratio':>7}")
  for label, t in med.items():
    print(f"{label:44} {t:9.4f} {t / med[base]:7.3f}")


if __name__ == "__main__":
  main()
