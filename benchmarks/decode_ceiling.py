"""How close can a decode step get to its roofline on this CPU with XLA's own matmuls?

The issue-15 goal "batch-16 roofline ratio >= 0.6" (``bench_real.py``) divides the memory
bound (weights + KV cache over a measured read bandwidth) by our decode step. This script
measures, in one process, the one part of a step no code of ours can shorten: the model's
weight matmuls alone, chained in one jitted program as a decode step runs them (per layer
q, k, v, o, gate, up, down on a [B, d] activation; then the tied LM head), with distinct
random weights of SmolLM2-135M's shapes so they stream from memory as in a real step. No
attention, norms, RoPE, cache writes or sampling. It prints, per batch size:

  * chain ms: the matmuls alone; our step ms: ``Sampler.generate`` minus its prefill over
    the new tokens (the real model from ``scripts/fetch_real_models.sh``, same prompts as
    ``bench_real.py``);
  * bound ms: max(weight bytes / read bandwidth, FLOPs / 2048^3 GEMM rate), both measured
    here (the KV cache is left out of this bound, so it is a little below bench_real's);
  * ceiling = bound / chain: the roofline ratio a step made of nothing but these matmuls
    would reach; ours = bound / our step.

  .venv/bin/python benchmarks/decode_ceiling.py [--batches 1,16,64] [--reps 7]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench_real  # noqa: E402  (FOLDER, prompt_ids, measure_gemm, ours_fns)
import bench_sampler  # noqa: E402  (measure_bandwidth, timed)
from cai_jax import sampling  # noqa: E402
from cai_jax.models.hf import from_hf  # noqa: E402
from cai_jax.models.store import SavedModel  # noqa: E402

NEW = 64


def weights(cfg, seed: int = 0) -> dict:
  """Random fp32 weights of the model's matmul shapes (one set per layer)."""
  d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
  nk, mk = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  key = jax.random.key(seed)
  shapes = {"q": (d, nk), "k": (d, mk), "v": (d, mk), "o": (nk, d), "gate": (d, f),
            "up": (d, f), "down": (f, d)}
  layers = []
  for i in range(cfg.n_layers):
    ks = jax.random.split(jax.random.fold_in(key, i), len(shapes))
    layers.append({n: 0.02 * jax.random.normal(k, s, jnp.float32)
                   for k, (n, s) in zip(ks, shapes.items())})
  embed = 0.02 * jax.random.normal(jax.random.fold_in(key, 10_000), (v, d), jnp.float32)
  return {"layers": layers, "embed": embed}


@jax.jit
def chain(w: dict, x: jax.Array) -> jax.Array:
  """The step's matmuls, each fed by the previous one (so none can be skipped)."""
  for lw in w["layers"]:
    q, k, v = x @ lw["q"], x @ lw["k"], x @ lw["v"]
    x = x + (q @ lw["o"]) * 1e-3 + (k.sum() + v.sum()) * 1e-6
    x = x + ((x @ lw["gate"]) * (x @ lw["up"])) @ lw["down"] * 1e-3
  return jnp.sum(x @ w["embed"].T, axis=-1)


def our_step(sampler, ids, batch: int, reps: int) -> float:
  """Seconds per decode step, as ``bench_real.py`` takes it: (generate - prefill) / (new - 1)."""
  fns = bench_real.ours_fns(sampler, ids[:batch], NEW)
  t = {name: bench_sampler.timed(fn, warmup=1, reps=reps) for name, fn in fns.items()}
  return (t["ours"] - t["prefill"]) / (NEW - 1)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", default="1,16,64")
  p.add_argument("--reps", type=int, default=7)
  args = p.parse_args(argv)
  model = from_hf(bench_real.FOLDER, jnp.float32)
  cfg = model.cfg
  sampler = sampling.Sampler.from_model(model)
  del model
  ids = bench_real.prompt_ids(SavedModel.open(bench_real.FOLDER).tokenizer())
  w = weights(cfg)
  n_w = sum(x.size for lw in w["layers"] for x in lw.values()) + w["embed"].size
  bw = bench_sampler.measure_bandwidth(1.0)
  gemm = bench_real.measure_gemm(jnp.float32)
  print(f"# SmolLM2-135M shapes, fp32, {n_w / 1e6:.1f} M matmul weights; read bandwidth "
        f"{bw / 1e9:.1f} GB/s, GEMM 2048^3 {gemm / 1e9:.0f} GFLOP/s; load "
        f"{os.getloadavg()[0]:.2f}", flush=True)
  print("| batch | chain ms | our step ms | bound ms | ceiling (bound / chain) | ours "
        "(bound / step) | our step / chain |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for b in (int(s) for s in args.batches.split(",")):
    x = jnp.asarray(np.random.default_rng(b).normal(size=(b, cfg.d_model)), jnp.float32)
    t_chain = bench_sampler.timed(lambda: chain(w, x).block_until_ready(), warmup=2,
                                  reps=args.reps)
    t_step = our_step(sampler, ids, b, max(3, args.reps // 2))
    bound = max(n_w * 4 / bw, 2 * n_w * b / gemm)
    print(f"| {b} | {t_chain * 1e3:.2f} | {t_step * 1e3:.2f} | {bound * 1e3:.2f} | "
          f"{bound / t_chain:.2f} | {bound / t_step:.2f} | {t_step / t_chain:.2f} |",
          flush=True)
  print(f"# load at end {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
  main()
