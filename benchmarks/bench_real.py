"""Real-model sampler benchmark (issue 15, item 6): SmolLM2-135M-Instruct against peers.

Command (the full run; ``--quick`` takes one timed repetition instead of three):

  .venv/bin/python benchmarks/bench_real.py [--quick] [--batches 1,16,64] \
      [--dtypes float32,bfloat16] [--tunix] [--reps N] [--new 64] [--torch_threads N]

Workload: the model's chat template (system prompt of the template + one user turn, the
assistant turn opened) applied to 64 varied short user messages (``MESSAGES``; ragged,
about 30-45 tokens); batch B takes the first B. Every contender decodes greedily exactly
``--new`` (64) tokens per row: no stop tokens for ours and Tunix, ``min_new_tokens =
max_new_tokens`` for transformers. Prompts are left-padded to the batch's longest with an
attention mask (transformers), to our own buckets (ours) and to Tunix's next power of two
(Tunix). The weights are the HF folder ``~/.cache/cai_jax/models/smollm2-135m-instruct``
(``scripts/fetch_real_models.sh``; or ``$CAI_JAX_SMOLLM2``), loaded by ``from_hf`` (ours),
``AutoModelForCausalLM`` (transformers) and Tunix's safetensors loader.

Numbers (contenders are timed interleaved, A B C A B C ..., after one warm-up call each;
medians over the repetitions; ratios are between numbers of the same run):
  * ours tok/s: B * new / seconds of one ``cai_jax.sampling.Sampler.generate`` call
    (prefill included), params and compute in the dtype (``from_hf(path, dtype)``).
  * HF tok/s: the same for ``transformers``' ``generate`` (PyTorch eager, intra-op
    threads = cores, ``OMP_WAIT_POLICY=PASSIVE`` unless set: with spinning OpenMP threads
    it ran 3-10x slower on this loaded 2-core machine), ``dtype=torch.float32`` /
    ``torch.bfloat16``.
  * ours/HF: ratio of the two.
  * roofline: for ours, bound / measured decode step, where the step is (generate time -
    separately timed prefill) / (new - 1) and the bound is max(bytes / bandwidth, FLOPs /
    GEMM rate) with bandwidth (1 GB float32 reduction) and GEMM rate (2048^3 matmul in the
    row's dtype) measured in this run. Bytes per step = all weights in the dtype (the tied
    embedding is read once, as LM head) + the KV cache read at the mean live length
    L = (batch's longest prompt) + new / 2: 2 * layers * B * L * kv_heads * head_dim *
    itemsize. FLOPs per step = 2 * params * B + attention 4 * layers * heads * head_dim *
    L * B. 1.0 = at the bound.
  * Tunix tok/s (``--tunix``): ``tunix.generate.sampler.Sampler`` (google-tunix 0.1.7) on
    its ``llama3`` model with SmolLM2's shapes and weights, greedy, cache = padded prompt +
    new slots, fed the same token ids; ours/Tunix is the ratio. Tunix's ``llama3``
    attention calls ``apply_rope`` without the config's ``rope_theta`` (always 1e6); we
    bind SmolLM2's 1e5 so its tokens match (the timing is the same either way).
  * Sanity (printed, never fails the run): at float32 B = 1 the first 16 greedy tokens of
    ours equal transformers' (transformers stopping at EOS here, so the prefix it returns
    is compared) and, with ``--tunix``, Tunix's.

Tunix is not a dependency of the project. To run ``--tunix`` without touching the venv,
install it and the modules its imports need into a separate folder, which this script
appends to ``sys.path`` after the venv (our jax / flax stay in use):

  .venv/bin/python -m pip install --target /tmp/tunix_pkgs --no-deps google-tunix==0.1.7 \
      google-metrax clu tensorboardX jaxtyping wadler_lindig pillow perfetto pandas \
      python-dateutil

(``$TUNIX_PKGS`` overrides the folder.) The machine's load shifts every number; the
script prints ``os.getloadavg()`` at start and end.
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# PyTorch's OpenMP threads spin-wait by default; on a loaded 2-core machine that made
# transformers 3-10x slower at 2 threads than at 1 (measured). Passive waiting gives its
# best time at every thread count; set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_sampler  # noqa: E402  (measure_bandwidth, interleaved, timed)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cai_jax import sampling  # noqa: E402
from cai_jax.data.dialogue import Turn  # noqa: E402
from cai_jax.models.hf import from_hf  # noqa: E402
from cai_jax.models.store import SavedModel  # noqa: E402

FOLDER = os.path.expanduser(os.environ.get(
    "CAI_JAX_SMOLLM2", "~/.cache/cai_jax/models/smollm2-135m-instruct"))
TUNIX_PKGS = os.environ.get("TUNIX_PKGS", "/tmp/tunix_pkgs")
CHECK_TOKENS = 16

MESSAGES = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "How do I boil an egg?",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for better sleep.",
    "What's 17 times 23?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Suggest a name for a grey cat.",
    "How many legs does a spider have?",
    "Write a short poem about the sea.",
    "What is a prime number?",
    "How can I stop procrastinating?",
    "Tell me a joke about computers.",
    "What does a compiler do?",
    "Summarize the plot of Romeo and Juliet.",
    "Is a tomato a fruit or a vegetable?",
    "How do I make a cup of tea?",
    "What causes earthquakes?",
    "Name three planets in our solar system.",
    "What is the boiling point of water?",
    "Recommend a good book for a long flight.",
    "How do vaccines work?",
    "What is the difference between weather and climate?",
    "Write a limerick about a dog.",
    "How do I start learning to code?",
    "What is machine learning?",
    "Give me a quick pasta recipe.",
    "Why do leaves change colour in autumn?",
    "How far is the Moon from Earth?",
    "What is the tallest mountain in the world?",
    "Describe a sunset in two sentences.",
    "How do I write a polite email declining an invitation?",
    "What is gravity?",
    "Can you help me plan a birthday party?",
    "What are the primary colours?",
    "How should I prepare for a job interview?",
    "What is the Pythagorean theorem?",
    "Why do cats purr?",
    "How does a bicycle stay upright?",
    "What is inflation in economics?",
    "List some healthy breakfast ideas.",
    "How can I reduce stress at work?",
    "What language is spoken in Brazil?",
    "Explain what DNA is to a child.",
    "How do I change a flat tyre?",
    "What is the largest ocean?",
    "Write a two-line motivational quote.",
    "How does the internet work?",
    "What should I pack for a beach holiday?",
    "What is the speed of light?",
    "How do bees make honey?",
    "Give me a fun fact about octopuses.",
    "What year did humans first land on the Moon?",
    "How do I keep houseplants alive?",
    "What is a black hole?",
    "Why is exercise important?",
    "How do I say thank you in Japanese?",
    "What is the water cycle?",
    "Write a short story opening about a lighthouse.",
    "How do solar panels produce electricity?",
    "What are some ways to save money?",
    "Who wrote Pride and Prejudice?",
    "How can I be a better listener?",
]
assert len(MESSAGES) == 64


def prompt_ids(tok) -> list[list[int]]:
  """Token ids of every message under the model's chat template (assistant turn open)."""
  return [tok.encode_dialogue([Turn("Human", m)], open_role="Assistant").ids for m in MESSAGES]


def measure_gemm(dtype, n: int = 2048) -> float:
  """GEMM rate (FLOP/s) of XLA on an n x n matmul in ``dtype`` (bench_sampler's is fp32)."""
  if dtype == jnp.float32:
    return bench_sampler.measure_gemm(n)
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  t = bench_sampler.timed(lambda: f(a).block_until_ready(), warmup=2, reps=5)
  return 2 * n**3 / t


# -- contenders ----------------------------------------------------------------------------

def ours_fns(sampler: sampling.Sampler, prompts, new: int) -> dict:
  return {"ours": lambda: sampler.generate(prompts, max_new_tokens=new),
          "prefill": lambda: sampler.start(prompts, min_free=new)[1].block_until_ready()}


def hf_model(dtype_name: str, threads: int):
  import torch
  import transformers
  torch.set_num_threads(threads)
  tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
  return transformers.AutoModelForCausalLM.from_pretrained(FOLDER, dtype=tdt).eval()


def hf_batch(prompts, pad_id: int):
  import torch
  longest = max(len(p) for p in prompts)
  x = torch.tensor([[pad_id] * (longest - len(p)) + list(p) for p in prompts])
  mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
  return x, mask


def hf_fn(model, prompts, new: int, pad_id: int):
  """transformers' greedy ``generate`` of exactly ``new`` tokens (left padding + mask)."""
  import torch
  x, mask = hf_batch(prompts, pad_id)

  def run():
    with torch.inference_mode():
      out = model.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=pad_id)
    assert out.shape[1] - x.shape[1] == new, out.shape
    return out[:, x.shape[1]:]
  return run


def hf_greedy_prefix(model, prompt, n: int, pad_id: int) -> list[int]:
  """transformers' greedy tokens (at most ``n``; it stops at the model's EOS)."""
  import torch
  x, mask = hf_batch([prompt], pad_id)
  with torch.inference_mode():
    out = model.generate(x, attention_mask=mask, max_new_tokens=n, do_sample=False,
                         pad_token_id=pad_id)
  return out[0, x.shape[1]:].tolist()


class _IdTokenizer:
  """What Tunix's sampler needs of a tokenizer, over fixed token ids: "i" -> prompt i.

  ``pad_id`` is 0 (``<|endoftext|>``, absent from every prompt: Tunix masks by pad id, and
  SmolLM2's own pad id 2 is ``<|im_end|>``, which the chat template uses); ``bos_id`` 0
  means "prepend none" (the template starts with its own token); decoding to text is
  skipped (ours returns ids only).
  """

  def __init__(self, table):
    self.table = table

  def encode(self, text, **_):
    return list(self.table[int(text)])

  def decode(self, ids, **_):
    return ""

  def bos_id(self):
    return 0

  def eos_id(self):
    return -1

  def pad_id(self):
    return 0


def tunix_import():
  """Imports Tunix from ``TUNIX_PKGS`` (appended after the venv) -> (model_lib, params_lib,
  sampler_lib), or raises ImportError with the reason."""
  if TUNIX_PKGS not in sys.path:
    sys.path.append(TUNIX_PKGS)
  # pylint: disable=import-outside-toplevel
  from tunix.generate import sampler as sampler_lib
  from tunix.models.llama3 import model as model_lib
  from tunix.models.llama3 import params as params_lib
  return model_lib, params_lib, sampler_lib


class TunixRunner:
  """Tunix's Llama-3 model with SmolLM2's shapes and weights, and its sampler."""

  def __init__(self, cfg, dtype, ids_table):
    model_lib, params_lib, sampler_lib = tunix_import()
    if not isinstance(model_lib.apply_rope, functools.partial):
      # Tunix 0.1.7's llama3 Attention calls apply_rope(..., head_dim=...) without the
      # config's rope_theta (default 1e6); bind SmolLM2's so the tokens match.
      model_lib.apply_rope = functools.partial(model_lib.apply_rope,
                                               rope_theta=cfg.rope_theta)
    self.tcfg = model_lib.ModelConfig(
        num_layers=cfg.n_layers, vocab_size=cfg.vocab_size, embed_dim=cfg.d_model,
        hidden_dim=cfg.d_ff, num_heads=cfg.n_heads, head_dim=cfg.head_dim,
        num_kv_heads=cfg.n_kv_heads, rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps,
        weight_tying=cfg.tie_embeddings)
    self.model = params_lib.create_model_from_safe_tensors(FOLDER, self.tcfg, mesh=None,
                                                           dtype=dtype)
    self.sampler_lib = sampler_lib
    self.tok = _IdTokenizer(ids_table)
    self.samplers = {}

  def fn(self, rows: list[int], new: int):
    """A callable generating ``new`` greedy tokens for prompt rows ``rows`` -> tokens."""
    longest = max(len(self.tok.table[i]) for i in rows)
    plen = 1 << (longest - 1).bit_length()           # Tunix's default prompt padding
    cache = plen + new
    if cache not in self.samplers:
      self.samplers[cache] = self.sampler_lib.Sampler(
          self.model, self.tok, self.sampler_lib.CacheConfig(
              cache_size=cache, num_layers=self.tcfg.num_layers,
              num_kv_heads=self.tcfg.num_kv_heads, head_dim=self.tcfg.head_dim))
    sampler, keys = self.samplers[cache], [str(i) for i in rows]

    def run():
      out = sampler(keys, max_generation_steps=new, max_prompt_length=plen,
                    eos_tokens=[-1])
      assert all(len(t) == new for t in out.tokens), [len(t) for t in out.tokens]
      return out.tokens
    return run


# -- the suite -----------------------------------------------------------------------------

def roofline(cfg, batch: int, longest: int, new: int, itemsize: int, bw: float,
             gemm: float) -> tuple[float, str]:
  """(bound seconds per decode step, which bound) for the model at this batch."""
  live = longest + new / 2
  w_bytes = cfg.num_params() * itemsize
  kv_bytes = 2 * cfg.n_layers * batch * live * cfg.n_kv_heads * cfg.head_dim * itemsize
  flops = 2 * cfg.num_params() * batch + 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * \
      live * batch
  mem, comp = (w_bytes + kv_bytes) / bw, flops / gemm
  return max(mem, comp), ("memory" if mem >= comp else "compute")


def run_dtype(dtype_name: str, args, ids: list[list[int]], bw: float, rows_out: list) -> None:
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  itemsize = jnp.dtype(dtype).itemsize
  new, reps = args.new, args.reps
  t0 = time.perf_counter()
  model = from_hf(FOLDER, dtype)
  cfg = model.cfg
  sampler = sampling.Sampler.from_model(model)
  del model
  hf = hf_model(dtype_name, args.torch_threads)
  pad_id = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
  tunix = None
  if args.tunix:
    tunix = TunixRunner(cfg, dtype, ids)
  print(f"\n## {dtype_name}: loaded ours, transformers{', Tunix' if tunix else ''} in "
        f"{time.perf_counter() - t0:.1f}s; {cfg.num_params() / 1e6:.1f}M params",
        flush=True)
  gemm = measure_gemm(dtype)
  print(f"{dtype_name} GEMM 2048^3: {gemm / 1e9:.0f} GFLOP/s", flush=True)

  if dtype_name == "float32" and 1 in args.batches:
    mine = sampler.generate(ids[:1], max_new_tokens=CHECK_TOKENS).tokens[0]
    ref = hf_greedy_prefix(hf, ids[0], CHECK_TOKENS, pad_id)
    same = mine[:len(ref)] == ref
    print(f"sanity fp32 B=1 greedy: ours == transformers on its {len(ref)} tokens: {same}"
          + ("" if same else f"\n  ours {mine}\n  HF   {ref}"), flush=True)
    if tunix is not None:
      theirs = [int(t) for t in tunix.fn([0], CHECK_TOKENS)()[0]]
      same = theirs == mine
      print(f"sanity fp32 B=1 greedy: ours == Tunix on {CHECK_TOKENS} tokens: {same}"
            + ("" if same else f"\n  ours  {mine}\n  Tunix {theirs}"), flush=True)

  for batch in args.batches:
    prompts = ids[:batch]
    fns = ours_fns(sampler, prompts, new)
    fns["hf"] = hf_fn(hf, prompts, new, pad_id)
    if tunix is not None:
      fns["tunix"] = tunix.fn(list(range(batch)), new)
    t0 = time.perf_counter()
    t = bench_sampler.interleaved(fns, reps)
    longest = max(len(p) for p in prompts)
    step = max(t["ours"] - t["prefill"], 1e-9) / (new - 1)
    bound, kind = roofline(cfg, batch, longest, new, itemsize, bw, gemm)
    row = {"dtype": dtype_name, "batch": batch, "ours": batch * new / t["ours"],
           "hf": batch * new / t["hf"], "roofline": bound / step,
           "tunix": batch * new / t["tunix"] if "tunix" in t else None}
    rows_out.append(row)
    line = (f"B={batch:2d} (prompts {min(len(p) for p in prompts)}-{longest} tokens): ours "
            f"{t['ours']:.2f}s = {row['ours']:.1f} tok/s (prefill {t['prefill'] * 1e3:.0f} ms, "
            f"step {step * 1e3:.1f} ms vs {kind} bound {bound * 1e3:.1f} ms: roofline "
            f"{row['roofline']:.2f}) | HF {t['hf']:.2f}s = {row['hf']:.1f} tok/s, ours/HF "
            f"{row['ours'] / row['hf']:.2f}x")
    if row["tunix"]:
      line += (f" | Tunix {t['tunix']:.2f}s = {row['tunix']:.1f} tok/s, ours/Tunix "
               f"{row['ours'] / row['tunix']:.2f}x")
    print(line + f"  [{time.perf_counter() - t0:.0f}s, load {os.getloadavg()[0]:.1f}]",
          flush=True)
  del sampler, hf, tunix
  gc.collect()


def table(rows: list, tunix: bool) -> str:
  head = "| dtype | batch | ours tok/s | HF tok/s | ours/HF | roofline (ours) |"
  sep = "|---|---:|---:|---:|---:|---:|"
  if tunix:
    head += " Tunix tok/s | ours/Tunix |"
    sep += "---:|---:|"
  lines = [head, sep]
  for r in rows:
    s = (f"| {r['dtype']} | {r['batch']} | {r['ours']:.1f} | {r['hf']:.1f} | "
         f"{r['ours'] / r['hf']:.2f}x | {r['roofline']:.2f} |")
    if tunix:
      s += (f" {r['tunix']:.1f} | {r['ours'] / r['tunix']:.2f}x |" if r["tunix"] else
            " - | - |")
    lines.append(s)
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="one timed repetition (default 3)")
  p.add_argument("--batches", default="1,16,64")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--tunix", action="store_true", help="also time Tunix's sampler")
  p.add_argument("--reps", type=int, default=None, help="timed repetitions (overrides)")
  p.add_argument("--new", type=int, default=64, help="new tokens per row")
  p.add_argument("--torch_threads", type=int, default=os.cpu_count() or 1,
                 help="PyTorch intra-op threads for transformers (default: cores)")
  args = p.parse_args(argv)
  args.batches = [int(b) for b in args.batches.split(",")]
  if max(args.batches) > len(MESSAGES):
    p.error(f"batches of at most {len(MESSAGES)} prompts")
  args.reps = args.reps or (1 if args.quick else 3)
  if not os.path.isfile(os.path.join(FOLDER, "config.json")):
    raise SystemExit(f"no SmolLM2 folder at {FOLDER}: run scripts/fetch_real_models.sh")
  if args.tunix:
    try:
      tunix_import()
    except ImportError as e:
      raise SystemExit(f"--tunix: cannot import Tunix from {TUNIX_PKGS}: {e!r} (see the "
                       "module docstring for the install command)") from None
  import torch
  import transformers
  print(f"# SmolLM2-135M-Instruct ({FOLDER}); devices {jax.devices()}, cpu_count "
        f"{os.cpu_count()}, jax {jax.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__} ({args.torch_threads} threads, OMP_WAIT_POLICY="
        f"{os.environ['OMP_WAIT_POLICY']}); greedy, {args.new} new tokens, reps {args.reps}; "
        f"load {os.getloadavg()}")
  ids = prompt_ids(SavedModel.open(FOLDER).tokenizer())
  print(f"{len(ids)} chat prompts, {min(map(len, ids))}-{max(map(len, ids))} tokens")
  bw = bench_sampler.measure_bandwidth(0.5 if args.quick else 1.0)
  print(f"read bandwidth: {bw / 1e9:.1f} GB/s", flush=True)
  rows = []
  for dtype_name in args.dtypes.split(","):
    run_dtype(dtype_name, args, ids, bw, rows)
  print(f"\nload at end {os.getloadavg()}\n")
  print(table(rows, args.tunix))


if __name__ == "__main__":
  main()
