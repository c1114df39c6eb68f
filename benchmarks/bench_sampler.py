"""Sampler benchmarks (issue 3): ratios to a peer and to limits measured in the same run.

CPU suite (default, ``--device cpu``), fp32, random weights, forced lengths (no stop):
  * C1/C2: tokens/s of ``cai_jax.sampling`` vs transformers ``generate`` (PyTorch eager,
    same weights via ``to_hf``), prompt 64 + 64 new tokens, batch 1 and 16, 125M model.
  * MBU at batch 1 against a read bandwidth measured in this run (1 GB reduction).
  * C3: whole loop in jit vs a Python loop over a jitted single step (125M and tiny).
  * C4: lower+compile seconds of the decode program for 64 vs 256 new tokens.
  * Live length (``--only cache``): decode at the same live length (prompt 64 + 64 new
    tokens) in a 128- and a 2,048-slot cache, with attention over the live part
    (the sampler) and over every slot (the single-program ``engine.decode``, the
    pre-issue-15 path), B = 1 and 16, 125M fp32.
  * Prefix reuse: see ``benchmarks/critique_revise.py`` (run separately).
GPU suite (``--device gpu``): ``benchmarks/bench_sampler_gpu.py`` (1B bf16 decode sweep).

Usage: python benchmarks/bench_sampler.py [--quick] [--skip_peer] [--only cache]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cai_jax import models, sampling  # noqa: E402
from cai_jax.sampling import buckets, engine  # noqa: E402
from cai_jax.sampling.select import Mode, select  # noqa: E402

M125 = models.ModelConfig(vocab_size=32000, d_model=768, n_layers=12, n_heads=12,
                          n_kv_heads=12, d_ff=2048, tie_embeddings=False)
TINY = models.ModelConfig(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                          d_ff=344, tie_embeddings=True)


def timed(fn, *, warmup=1, reps=3) -> float:
  """Median wall seconds of ``fn()`` (which must block) after warm-up calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_bandwidth(gb: float = 1.0) -> float:
  """Read bandwidth (bytes/s) of a jitted float32 reduction over ``gb`` GB."""
  x = jnp.ones((int(gb * 2**30) // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  t = timed(lambda: f(x).block_until_ready(), warmup=2, reps=5)
  return x.nbytes / t


def measure_gemm(n: int = 2048) -> float:
  """fp32 GEMM rate (FLOP/s) of XLA on an n x n matmul."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  t = timed(lambda: f(a).block_until_ready(), warmup=2, reps=5)
  return 2 * n**3 / t


def prompts_for(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return rng.integers(3, vocab, size=(batch, length)).tolist()


def hf_generate_fn(model, batch: int, plen: int, new: int):
  """A callable running transformers' greedy ``generate`` on the same weights (fp32)."""
  import torch
  import transformers
  from cai_jax.models.hf import to_hf
  torch.set_num_threads(os.cpu_count() or 1)
  with tempfile.TemporaryDirectory() as d:
    to_hf(model, d)
    hf = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
  x = torch.tensor(prompts_for(batch, plen, model.cfg.vocab_size))
  mask = torch.ones_like(x)

  def run():
    with torch.no_grad():
      hf.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                  do_sample=False, pad_token_id=0)
  return run


def interleaved(fns: dict, reps: int) -> dict:
  """Median seconds of each callable, runs interleaved (A B A B ...) after one warm-up each.

  On a shared machine the load drifts; interleaving exposes every contender to it alike.
  """
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(ts) for name, ts in times.items()}


def python_loop_fn(sampler: sampling.Sampler, prompts, new: int, host_check: bool):
  """A callable: prefill, then a Python loop dispatching one jitted decode step per token.

  With ``host_check`` the loop reads the sampled tokens every step (what a
  Python-driven sampler needs to stop at EOS); without it, dispatch is fully async.
  """
  graphdef = sampler.graphdef

  def one_step(params, state, logits, key):
    tok, _ = select(logits, key, jnp.float32(1), jnp.float32(1), Mode())
    state = state._replace(pending_b=tok, pending_ok_b=jnp.ones_like(state.pending_ok_b))
    return engine._feed(models.merge(graphdef, params), state)  # pylint: disable=protected-access
  step = jax.jit(one_step, donate_argnums=(1,))
  key = jax.random.key(0)

  def run():
    conv, logits = sampler.start(prompts, min_free=new)
    state = conv.state
    for _ in range(new - 1):
      state, logits = step(sampler.params, state, logits, key)
      if host_check:
        np.asarray(state.pending_b)
    logits.block_until_ready()
  return run


def compile_seconds(sampler: sampling.Sampler, batch: int, plen: int, new: int) -> float:
  """Seconds to trace, lower and compile the decode program for ``new`` tokens."""
  prompts = prompts_for(batch, plen, sampler.cfg.vocab_size)
  conv, logits = sampler.start(prompts, min_free=new)
  args = (sampler.graphdef, sampler.params, conv.state, logits, jax.random.key(0),
          jnp.float32(1), jnp.float32(1), jnp.asarray(buckets.stop_array(())), jnp.int32(new))
  jax.clear_caches()
  t0 = time.perf_counter()
  engine.decode.trace(*args, num_out=buckets.length_bucket(new), mode=Mode(),
                      collect_logits=False).lower().compile()
  return time.perf_counter() - t0


def cpu_suite(args) -> None:
  reps = 1 if args.quick else 5
  print(f"# devices: {jax.devices()}  cpu_count: {os.cpu_count()}  jax {jax.__version__}")
  bw = measure_bandwidth(0.5 if args.quick else 1.0)
  gemm = measure_gemm()
  print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s; fp32 GEMM 2048^2: {gemm / 1e9:.0f} "
        "GFLOP/s")
  model = models.build(M125, seed=0)
  sampler = sampling.Sampler.from_model(model)
  n_params = M125.num_params()
  w_bytes = 4 * n_params
  plen, new = 64, 64
  print(f"\n## 125M fp32 ({n_params / 1e6:.1f}M params), prompt {plen} + {new} new tokens")
  for batch in (1, 16):
    prompts = prompts_for(batch, plen, M125.vocab_size)
    fns = {"ours": lambda: sampler.generate(prompts, max_new_tokens=new),
           "prefill": lambda: sampler.start(prompts, min_free=new)[1].block_until_ready()}
    if not args.skip_peer:
      fns["hf"] = hf_generate_fn(model, batch, plen, new)
    t = interleaved(fns, reps)
    gen = batch * new / t["ours"]
    t_dec = max(t["ours"] - t["prefill"], 1e-9)
    line = (f"B={batch:2d} ours: generate {gen:7.1f} tok/s, decode-only "
            f"{batch * (new - 1) / t_dec:7.1f} tok/s")
    if "hf" in t:
      hf = batch * new / t["hf"]
      line += f" | transformers.generate {hf:7.1f} tok/s | ratio ours/HF = {gen / hf:.2f}x"
    step = t_dec / (new - 1)
    kv = 2 * M125.n_layers * batch * (plen + new / 2) * M125.n_kv_heads * M125.head_dim * 4
    mem_bound = (w_bytes + kv) / bw
    comp_bound = 2 * n_params * batch / gemm
    line += (f" | MBU {(w_bytes + kv) / step / bw:.2f} | roofline ratio "
             f"{max(mem_bound, comp_bound) / step:.2f}")
    print(line, flush=True)
  print("\n## jit loop vs Python loop of jitted steps (B=1)")
  for name, cfg in (("125M", M125), ("tiny", TINY)):
    s = sampler if cfg is M125 else sampling.Sampler.from_model(models.build(cfg, seed=0))
    prompts = prompts_for(1, plen, cfg.vocab_size)
    t = interleaved({
        "jit": lambda: s.generate(prompts, max_new_tokens=new),
        "prefill": lambda: s.start(prompts, min_free=new)[1].block_until_ready(),
        "py": python_loop_fn(s, prompts, new, host_check=False),
        "py_sync": python_loop_fn(s, prompts, new, host_check=True)}, reps)
    dec = {k: (new - 1) / max(t[k] - t["prefill"], 1e-9) for k in ("jit", "py", "py_sync")}
    print(f"{name}: jit loop {dec['jit']:8.1f} tok/s | python loop async {dec['py']:8.1f} "
          f"tok/s (ratio {dec['jit'] / dec['py']:.2f}x) | python loop reading tokens each "
          f"step {dec['py_sync']:8.1f} tok/s (ratio {dec['jit'] / dec['py_sync']:.2f}x)",
          flush=True)
  print("\n## decode compile seconds (125M, B=16, cold, no persistent cache)")
  c64 = compile_seconds(sampler, 16, plen, 64)
  c256 = compile_seconds(sampler, 16, plen, 256)
  print(f"64 new: {c64:.2f} s, 256 new: {c256:.2f} s, ratio {c256 / c64:.2f}")


def whole_cache_decode_fn(sampler: sampling.Sampler, prompts, new: int, cache_len: int):
  """A callable: prefill, then the single-program decode attending to every cache slot."""
  stops = jnp.asarray(buckets.stop_array(()))

  def run():
    conv, logits = sampler.start(prompts, cache_len=cache_len, min_free=new)
    _, out = engine.decode(sampler.graphdef, sampler.params, conv.state, logits,
                           jax.random.key(0), jnp.float32(1e-6), jnp.float32(1.0), stops,
                           jnp.int32(new), num_out=buckets.length_bucket(new), mode=Mode())
    out.tokens_bn.block_until_ready()
  return run


def cache_length_suite(args) -> None:
  """Decode seconds at one live length (prompt 64 + 64 new) in 128 / 2,048-slot caches."""
  reps = 1 if args.quick else 5
  print(f"# devices: {jax.devices()}  cpu_count: {os.cpu_count()}  jax {jax.__version__}")
  sampler = sampling.Sampler.from_model(models.build(M125, seed=0))
  plen, new = 64, 64
  print(f"\n## decode at live length {plen}..{plen + new} (125M fp32, greedy, forced length)")
  for batch in (1, 16):
    prompts = prompts_for(batch, plen, M125.vocab_size)
    fns = {}
    for cache in (128, 2048):
      fns[f"live {cache}"] = (lambda c: lambda: sampler.generate(
          prompts, max_new_tokens=new, cache_len=c))(cache)
      fns[f"whole {cache}"] = whole_cache_decode_fn(sampler, prompts, new, cache)
      fns[f"prefill {cache}"] = (lambda c: lambda: sampler.start(
          prompts, cache_len=c, min_free=new)[1].block_until_ready())(cache)
    t = interleaved(fns, reps)
    dec = {k: max(t[k] - t[f"prefill {k.split()[1]}"], 1e-9) / (new - 1)
           for k in t if not k.startswith("prefill")}
    print(f"B={batch:2d} ms/step: live-length 128: {1e3 * dec['live 128']:.2f}, 2048: "
          f"{1e3 * dec['live 2048']:.2f} (ratio {dec['live 2048'] / dec['live 128']:.2f}) | "
          f"whole cache 128: {1e3 * dec['whole 128']:.2f}, 2048: {1e3 * dec['whole 2048']:.2f}"
          f" (ratio {dec['whole 2048'] / dec['whole 128']:.2f}) | prefill 128 / 2048: "
          f"{t['prefill 128']:.3f} / {t['prefill 2048']:.3f} s", flush=True)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--quick", action="store_true", help="fewer repetitions")
  p.add_argument("--skip_peer", action="store_true", help="no transformers comparison")
  p.add_argument("--only", choices=("cache",), help="run one CPU section only")
  args = p.parse_args(argv)
  if args.device == "gpu":
    sys.path.insert(0, os.path.dirname(__file__))
    import bench_sampler_gpu  # pylint: disable=import-outside-toplevel
    bench_sampler_gpu.main()
    return
  if args.only == "cache":
    cache_length_suite(args)
    return
  cpu_suite(args)


if __name__ == "__main__":
  main()
