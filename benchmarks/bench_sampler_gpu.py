"""GPU decode sweep: 1B bf16, prompt 256 + 256 new tokens.

Reports, per batch size, tokens/s, MBU = (weight bytes + mean KV bytes read) /
(step time * peak bandwidth) and the roofline ratio (measured tok/s over the bound
max(bytes read / peak bandwidth, FLOPs / peak FLOP/s) per step). Goals: MBU >= 0.5 at B=1; roofline ratio >= 0.4 at B=256.

Usage: python benchmarks/bench_sampler.py --device gpu   (not yet measured: no GPU so far)
"""
from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from cai_jax import models, sampling

# Llama-3.2-1B shape, bf16.
M1B = models.ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
                         n_kv_heads=8, head_dim=64, d_ff=8192, tie_embeddings=True,
                         param_dtype="bfloat16", dtype="bfloat16", max_seq_len=4096)
PEAKS = {"H100": (989.4e12, 3.35e12), "H200": (989.4e12, 4.8e12)}  # (FLOP/s, bytes/s)
PROMPT, NEW = 256, 256
BATCHES = (1, 16, 64, 256)


def _peaks() -> tuple[str, float, float]:
  kind = jax.devices()[0].device_kind
  for name, (flops, bw) in PEAKS.items():
    if name in kind:
      return kind, flops, bw
  raise SystemExit(f"unknown accelerator {kind!r}; add its peaks to PEAKS")


def _time(fn, reps: int = 3) -> float:
  fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main() -> None:
  kind, flops, bw = _peaks()
  graphdef, params = models.init(M1B, seed=0)
  sampler = sampling.Sampler(graphdef, params)
  n = M1B.num_params()
  w_bytes = 2 * n
  kv_per_tok = 2 * M1B.n_layers * M1B.n_kv_heads * M1B.head_dim * 2
  print(f"# {kind}, jax {jax.__version__}, 1B bf16 ({n / 1e9:.3f}B params), "
        f"prompt {PROMPT} + {NEW} new tokens")
  rng = np.random.default_rng(0)
  for b in BATCHES:
    prompts = rng.integers(3, M1B.vocab_size, size=(b, PROMPT)).tolist()
    t_all = _time(lambda: sampler.generate(prompts, max_new_tokens=NEW))
    t_pre = _time(lambda: sampler.start(prompts, min_free=NEW)[1].block_until_ready())
    step = (t_all - t_pre) / (NEW - 1)
    t_bar = PROMPT + NEW / 2
    bytes_step = w_bytes + b * t_bar * kv_per_tok
    flops_step = 2 * n * b + 4 * M1B.n_layers * b * t_bar * M1B.n_heads * M1B.head_dim
    bound = max(bytes_step / bw, flops_step / flops)
    print(f"B={b:4d}: {b / step:10.0f} tok/s decode ({b * NEW / t_all:10.0f} incl. prefill) | "
          f"MBU {bytes_step / step / bw:.2f} | roofline ratio {bound / step:.2f}", flush=True)


if __name__ == "__main__":
  main()
