"""GPU benchmark (issue 15, item 7): 1B bf16 decode vs the roofline and transformers, and
the time split of a PPO iteration at 1B. One command, one JSON, one markdown table.

Run on the device machine (one H200), from the repository root:

  PYTHONUNBUFFERED=1 python3 benchmarks/bench_sampler_gpu.py --out $OUT/gpu.json

Wall time on an H200: 340 s (2026-12-04: decode 52 s, peer 137 s, PPO 82 s, of which the
PPO learner's first compile 68 s); results in BENCHMARKS.md, "GPU (item 7)". Every section rewrites the JSON as it ends, so
a run stopped at its limit keeps the finished sections; a section that fails is recorded
under ``errors`` (exit status 1) and the next one still runs. ``--only decode,peer,ppo``
picks sections (e.g. ``--only ppo`` to rerun one). ``python benchmarks/bench_sampler.py
--device gpu`` runs the same benchmark.

Setup. The script puts the repository root on ``sys.path``, so no install is needed
beyond the dependencies. With network access: ``pip install -e .[test] && pip install -U
"jax[cuda12]"``. The lent H200 image has no network but holds jax 0.11 with its CUDA 13
plugin, flax, optax, orbax, sentencepiece, safetensors, torch 2.11+cu130 and
transformers 5.17 (run it with that image's ``python3``, with that image's flax: flax
0.12.8, this repo's pin, does not import under jax 0.11). It lacks these imports of
``cai_jax`` (``sampling`` imports gin; ``rl.reward`` imports grain and
tensorflow-datasets through ``data.loaders``), pinned as in this repo's venv:

  gin-config==0.5.0 grain==0.2.18 array-record==0.8.6 tensorflow-datasets==4.9.10
  tensorflow-metadata==1.21.0 immutabledict==4.3.1 portpicker==1.6.0 promise==2.3
  toml==0.10.2 googleapis-common-protos==1.76.0
  (the 2026-12-04 run also carried tensorboardX==2.6.5 dm-tree simple-parsing termcolor
  docstring-parser, 13 MB of wheels in all, and set XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 so
  that the transformers peer has room beside JAX's pool)

Carry them as wheels (the device tool's README: ``pip download --no-deps
--only-binary=:all: --python-version 3.12 ... -d .whl NAMES``, ``carry: [".whl"]``, then
start the command with ``python3 -m pip install -q --no-index --no-deps --target
/tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH;``); promise 2.3 has no
wheel on PyPI: build one here with ``pip wheel --no-deps promise==2.3 -w .whl`` (pure
Python). When an import fails, the script names every one of these that is missing in
one message (``REQUIRED``), not just the first.

What it measures (random weights, Llama-3.2-1B shapes: vocab 128256, d 2048, 16 layers,
32 query / 8 kv heads of 64, d_ff 8192, tied embeddings, rope theta 5e5; bf16 params and
activations, 1.236B params):

1. ``decode``: ``cai_jax.sampling.Sampler.generate``, greedy, forced length (no stop
   tokens), prompt 256 + 256 new tokens, batch 1, 16, 64, 256. Per batch:
   * ``generate_s``: median seconds of a whole ``generate`` call (prefill + 256 tokens);
     ``prefill_s``: median seconds of ``Sampler.start`` alone;
   * ``step_s`` = (generate_s - prefill_s) / 255 (the first token comes from the
     prefill's logits); ``decode_tok_s`` = batch / step_s; ``generate_tok_s`` =
     batch * 256 / generate_s;
   * ``bytes_step`` = bf16 weight bytes (2 * params) + the KV bytes a step must read at
     the mean live length 256 + 128 (2 * layers * kv_heads * head_dim * 2 bytes per
     token per row); ``flops_step`` = 2 * params * batch + attention 4 * layers *
     batch * mean length * heads * head_dim;
   * ``mbu`` = bytes_step / step_s / peak bandwidth (4.8 TB/s on an H200);
     ``roofline_ratio`` = max(bytes_step / peak bandwidth, flops_step / peak bf16 dense
     FLOP/s (989 TFLOP/s)) / step_s: 1.0 would be the hardware bound;
   * ``compile_s`` = first call's seconds - generate_s (compiles + first-touch);
     ``compile_events_s``: the seconds JAX itself reports for tracing, lowering and
     backend compilation during the first calls (``jax.monitoring`` events).
2. ``peer``: transformers ``LlamaForCausalLM.generate`` on the same GPU with the same
   weights (``cai_jax.models.hf.to_hf``), bf16, greedy, ``min_new_tokens`` =
   ``max_new_tokens`` = 256, same prompts, ``torch.cuda.synchronize()`` around each
   timed call (one warm-up call of the same length, then the median of 2).
   ``hf_generate_tok_s`` = batch * 256 / seconds, and ``ours_over_hf`` = our
   generate_tok_s / theirs (the ratio of whole generate calls, prefill included).
   ``first_token_agreement``: share of rows whose first greedy token is the same in
   both (a check that the weights match; bf16 ties can differ). Without CUDA in torch
   the peer is skipped (the JSON says so).
3. ``ppo``: one PPO iteration of the real learner (``cai_jax.rl.ppo.PPOLearner``, built
   as ``cai_jax.programs.rl_cai.ppo`` builds it: the policy LM; the frozen reference =
   the initial policy; the reward a ``ScalarHeadModel`` of the same 1B shape whose trunk
   is the LM's (a PM starts from the pretrained LM) with a random head; the value model
   a copy of it (the program's default); AdamW on policy + value, the state in its
   shardings on a 1x1x1 mesh; ``RewardModel`` over the tokenizer below), rollout_batch 64,
   minibatch 16, 2 epochs (8 optimizer steps), 128 new tokens at temperature 1 after
   prompts of up to 128 tokens (made-up words, filling one prompt bucket).
   ``learner.rollout`` then ``learner.learn``; 2 warm-up iterations (compiles), then the
   mean of 3: ``generation_s`` (sampling), ``score_s`` (decoding answers, PM encoding,
   the scoring pass over policy / reference / value / PM, advantages), ``learn_s`` (the
   minibatch steps), ``other_s`` (the rest of the wall time), and ``generation_share`` =
   generation_s / iteration_s. The text side is a toy sentencepiece tokenizer (160
   pieces, trained at start); the models keep the 128256-token vocabulary (the LM head's
   cost is real), and answer ids past the tokenizer are folded onto its word pieces
   when decoded so the PM sees answers of realistic length. ``compile_s_in_timed``
   flags recompiles inside the timed iterations (then the split includes them).

Goals (printed next to the numbers): MBU >= 0.65 at batch 1; roofline ratio >= 0.55 at
batch 256; generation share of a PPO iteration <= 50%.

JSON (``--out``): ``meta`` (device, peaks, shapes, seconds per section), ``decode`` and
``peer`` (per batch, the keys above), ``ppo`` (the shapes, every iteration, the mean
split and shares), ``goals`` (value, target, verdict) and ``errors`` (tracebacks).

``--smoke``: every code path on CPU with tiny shapes (bf16, d_model 64, 2 layers, vocab
256, batch 1 and 4, prompt 16 + 16 new; PPO rollout 8 / minibatch 4 / 8 new tokens after
prompts of up to 32, one warm-up and one timed iteration; weights drawn with numpy
instead of the jitted initialiser), about a minute on 2 busy CPU cores, most of it XLA:CPU compiling the PPO
learner; the peaks are placeholders (said in the output), so its MBU and roofline numbers
mean nothing, and the peer runs on torch's CPU. ``tests/test_gpu_bench_smoke.py`` runs it
with one float32 layer.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What cai_jax imports on this script's paths beyond jax (module: distribution); named all
# at once when an import fails, for a bare machine (see Setup in the docstring).
REQUIRED = {"flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint",
            "sentencepiece": "sentencepiece", "safetensors": "safetensors",
            "gin": "gin-config", "grain": "grain", "array_record": "array-record",
            "tensorflow_datasets": "tensorflow-datasets",
            "tensorflow_metadata": "tensorflow-metadata", "immutabledict": "immutabledict",
            "portpicker": "portpicker", "promise": "promise", "toml": "toml",
            "google.api": "googleapis-common-protos"}


def missing_modules() -> list[str]:
  """Distributions of ``REQUIRED`` whose module cannot be found."""
  out = []
  for module, dist in REQUIRED.items():
    try:
      found = importlib.util.find_spec(module) is not None
    except ImportError:   # a parent package is missing
      found = False
    if not found:
      out.append(dist)
  return out


try:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import sentencepiece as spm
  from flax.nnx import traversals

  from cai_jax import constitution as cc
  from cai_jax import models, sampling
  from cai_jax.data.dialogue import HUMAN, Turn
  from cai_jax.data.tokenizer import Tokenizer, train_tokenizer
  from cai_jax.models.hf import to_hf
  from cai_jax.rl import ppo as ppo_lib
  from cai_jax.rl.reward import RewardModel
  from cai_jax.sharding import make_mesh
  from cai_jax.train import trainer
  from cai_jax.train.optim import make_optimizer
except ImportError as _e:
  raise SystemExit(f"bench_sampler_gpu: {_e!r}; missing Python packages here: "
                   f"{missing_modules()} (the docstring's Setup says how to carry them)"
                   ) from _e

# Llama-3.2-1B shape, bf16 (gin_configs/models/llama_1b.gin).
M1B = models.ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
                         n_kv_heads=8, head_dim=64, d_ff=8192, tie_embeddings=True,
                         rope_theta=500000.0, param_dtype="bfloat16", dtype="bfloat16",
                         max_seq_len=8192)
TINY = models.ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                          head_dim=16, d_ff=128, tie_embeddings=True, param_dtype="bfloat16",
                          dtype="bfloat16", max_seq_len=512)
PEAKS = {"H100": (989.4e12, 3.35e12), "H200": (989.4e12, 4.8e12)}  # (FLOP/s, bytes/s)
PLACEHOLDER_PEAKS = (1e12, 1e11)  # --smoke: not this machine's peaks
GOALS = {"mbu_b1": 0.65, "roofline_bmax": 0.55, "generation_share": 0.50}


@dataclasses.dataclass(frozen=True)
class Shapes:
  """One run's sizes."""

  model: models.ModelConfig
  batches: tuple[int, ...]
  prompt: int
  new: int
  reps: int                # timed calls of ours (median)
  hf_reps: int             # timed calls of the peer (median)
  ppo_rollout: int
  ppo_minibatch: int
  ppo_epochs: int
  ppo_new: int
  ppo_prompt: int          # prompt tokens (at most; whole words)
  ppo_warmup: int          # untimed iterations (compiles)
  ppo_timed: int


GPU = Shapes(M1B, (1, 16, 64, 256), prompt=256, new=256, reps=3, hf_reps=2, ppo_rollout=64,
             ppo_minibatch=16, ppo_epochs=2, ppo_new=128, ppo_prompt=128, ppo_warmup=2,
             ppo_timed=3)
SMOKE = Shapes(TINY, (1, 4), prompt=16, new=16, reps=1, hf_reps=1, ppo_rollout=8,
               ppo_minibatch=4, ppo_epochs=2, ppo_new=8, ppo_prompt=32, ppo_warmup=1,
               ppo_timed=1)
SECTIONS = ("decode", "peer", "ppo")


# --- Helpers ---------------------------------------------------------------------------


class CompileClock:
  """Sums the seconds JAX reports (``jax.monitoring``) for tracing, lowering to MLIR and
  backend compiles (``seconds``), and for backend compiles alone (``backend_seconds``)."""

  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")
  _instance = None

  def __init__(self):
    self.seconds = 0.0
    self.backend_seconds = 0.0

  @classmethod
  def get(cls) -> "CompileClock":
    if cls._instance is None:
      cls._instance = cls()
      jax.monitoring.register_event_duration_secs_listener(cls._instance)
    return cls._instance

  def __call__(self, event, duration, *args, **kwargs):
    del args, kwargs
    if event in self.EVENTS:
      self.seconds += float(duration)
      if event == self.EVENTS[-1]:
        self.backend_seconds += float(duration)

  @contextlib.contextmanager
  def span(self, into: dict, key: str = "compile_events_s"):
    """Adds the block's compile seconds to ``into[key]`` (backend compiles alone to
    ``into[key + "_backend"]``)."""
    s0, b0 = self.seconds, self.backend_seconds
    try:
      yield
    finally:
      into[key] = into.get(key, 0.0) + self.seconds - s0
      into[key + "_backend"] = into.get(key + "_backend", 0.0) + self.backend_seconds - b0


def _median_s(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def prompts_for(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return rng.integers(3, vocab, size=(batch, length)).tolist()


def peaks(smoke: bool) -> dict:
  kind = jax.devices()[0].device_kind
  if smoke:
    flops, bw = PLACEHOLDER_PEAKS
    return {"device_kind": kind, "flops": flops, "bandwidth": bw, "placeholder": True}
  for name, (flops, bw) in PEAKS.items():
    if name in kind:
      return {"device_kind": kind, "flops": flops, "bandwidth": bw, "placeholder": False}
  raise SystemExit(f"unknown accelerator {kind!r} (backend {jax.default_backend()}); add its "
                   "peaks to PEAKS, or pass --smoke for a CPU check")


def decode_costs(cfg: models.ModelConfig, batch: int, prompt: int, new: int) -> dict:
  """Bytes a decode step must read and FLOPs it must do, at the mean live length."""
  n = cfg.num_params()
  itemsize = np.dtype(cfg.jnp_param_dtype).itemsize
  kv_tok = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * np.dtype(cfg.jnp_dtype).itemsize
  t_bar = prompt + new / 2
  return {"weight_bytes": itemsize * n, "kv_bytes": batch * t_bar * kv_tok,
          "bytes_step": itemsize * n + batch * t_bar * kv_tok,
          "flops_step": 2 * n * batch + 4 * cfg.n_layers * batch * t_bar * cfg.n_heads
                        * cfg.head_dim}


def init_lm(cfg: models.ModelConfig, host: bool):
  """(graphdef, params) of a random LM: ``models.init`` (jitted, on the device), or with
  ``host`` the same distribution drawn with numpy (norm scales 1, other weights normal with
  ``init_std``): XLA:CPU takes seconds to compile the jitted initialiser, which --smoke
  (and its test) need not spend."""
  if not host:
    return models.init(cfg, seed=0)
  graphdef, shapes, _ = models.abstract(cfg)
  rng = np.random.default_rng(0)
  flat = {path: jnp.asarray(np.ones(x.shape) if path[-1].startswith("scale") else
                            rng.normal(0.0, cfg.init_std, x.shape), x.dtype)
          for path, x in traversals.flatten_mapping(shapes).items()}
  return graphdef, traversals.unflatten_mapping(flat)


class Report:
  """The results, written to ``path`` (JSON) after every section."""

  def __init__(self, path: str | None, meta: dict):
    self.path = path
    self.data = {"meta": meta, "decode": {}, "peer": {}, "ppo": {}, "goals": {},
                 "errors": {}}

  def save(self) -> None:
    if not self.path:
      return
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self.data, f, indent=2, default=float)
    os.replace(tmp, self.path)


# --- 1. Our decode ----------------------------------------------------------------------


def bench_decode(sh: Shapes, graphdef, params, pk: dict, report: Report) -> dict:
  """Ours at every batch size: tokens/s, MBU, roofline ratio, compile seconds."""
  clock = CompileClock.get()
  sampler = sampling.Sampler(graphdef, params)
  rows, outputs = {}, {}
  for b in sh.batches:
    prompts = prompts_for(b, sh.prompt, sh.model.vocab_size)
    gen = lambda: sampler.generate(prompts, max_new_tokens=sh.new)  # noqa: E731
    pre = lambda: sampler.start(prompts, min_free=sh.new)[1].block_until_ready()  # noqa: E731
    r = {"batch": b}
    with clock.span(r):
      t0 = time.perf_counter()
      out = gen()
      r["first_call_s"] = time.perf_counter() - t0
      pre()
    r["generate_s"] = _median_s(gen, sh.reps)
    r["prefill_s"] = _median_s(pre, sh.reps)
    outputs[b] = out.tokens
    assert all(len(t) == sh.new for t in out.tokens), "forced length not honoured"
    step = max(r["generate_s"] - r["prefill_s"], 1e-9) / (sh.new - 1)
    c = decode_costs(sh.model, b, sh.prompt, sh.new)
    bound = max(c["bytes_step"] / pk["bandwidth"], c["flops_step"] / pk["flops"])
    r.update(step_s=step, decode_tok_s=b / step, generate_tok_s=b * sh.new / r["generate_s"],
             bytes_step=c["bytes_step"], flops_step=c["flops_step"],
             mbu=c["bytes_step"] / step / pk["bandwidth"], roofline_ratio=bound / step,
             bound="memory" if c["bytes_step"] / pk["bandwidth"] >= c["flops_step"] / pk[
                 "flops"] else "compute",
             compile_s=r["first_call_s"] - r["generate_s"])
    rows[str(b)] = r
    report.data["decode"] = rows
    report.save()
    print(f"  ours B={b:4d}: {r['decode_tok_s']:11.0f} tok/s decode, {r['generate_tok_s']:11.0f}"
          f" incl. prefill | {1e3 * step:7.3f} ms/step | MBU {r['mbu']:.2f} | roofline "
          f"{r['roofline_ratio']:.2f} ({r['bound']}-bound) | compile {r['compile_s']:.1f} s "
          f"(jax events {r['compile_events_s']:.1f} s)", flush=True)
  del sampler
  return outputs


# --- 2. The transformers peer --------------------------------------------------------


def bench_peer(sh: Shapes, graphdef, params, ours_tokens: dict, report: Report) -> None:
  """transformers' greedy ``generate`` on the same weights, device and prompts."""
  try:  # pylint: disable=import-outside-toplevel
    import torch
    import transformers
  except ImportError as e:
    report.data["peer"] = {"skipped": f"no torch / transformers here ({e}): no peer"}
    report.save()
    print(f"  peer skipped: {report.data['peer']['skipped']}", flush=True)
    return
  cuda = torch.cuda.is_available()
  info = {"torch": torch.__version__, "transformers": transformers.__version__,
          "cuda": cuda, "dtype": sh.model.param_dtype}
  if not cuda and not report.data["meta"]["smoke"]:
    info["skipped"] = "torch has no CUDA on this machine: no peer"
    report.data["peer"] = info
    report.save()
    print(f"  peer skipped: {info['skipped']} (torch {torch.__version__})", flush=True)
    return
  device = "cuda" if cuda else "cpu"
  info["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  transformers.utils.logging.disable_progress_bar()
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as d:
    to_hf(models.merge(graphdef, params), d)
    hf = transformers.LlamaForCausalLM.from_pretrained(
        d, dtype=getattr(torch, sh.model.param_dtype)).to(device)
  hf.eval()
  info["load_s"] = time.perf_counter() - t0
  rows = {}
  for b in sh.batches:
    x = torch.tensor(prompts_for(b, sh.prompt, sh.model.vocab_size), device=device)
    mask = torch.ones_like(x)
    result = {}

    def run(new, x=x, mask=mask, result=result):
      with torch.no_grad():
        sync()
        t = time.perf_counter()
        seq = hf.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0)
        sync()
        result["s"] = time.perf_counter() - t
        result["seq"] = seq
      return result["s"]

    run(sh.new)  # warm-up at full length: kernels, allocator, every cache shape
    t = statistics.median(run(sh.new) for _ in range(sh.hf_reps))
    seq = result["seq"][:, sh.prompt:].cpu().numpy()
    assert seq.shape == (b, sh.new), seq.shape
    ours = report.data["decode"].get(str(b), {})
    r = {"batch": b, "hf_generate_s": t, "hf_generate_tok_s": b * sh.new / t}
    if ours:
      r["ours_over_hf"] = ours["generate_tok_s"] / r["hf_generate_tok_s"]
    if b in ours_tokens:
      r["first_token_agreement"] = float(np.mean(
          [int(o[0]) == int(h[0]) for o, h in zip(ours_tokens[b], seq)]))
    rows[str(b)] = r
    report.data["peer"] = {**info, "batches": rows}
    report.save()
    print(f"  HF   B={b:4d}: {r['hf_generate_tok_s']:11.0f} tok/s incl. prefill | ours/HF "
          f"{r.get('ours_over_hf', float('nan')):.2f}x | first-token agreement "
          f"{r.get('first_token_agreement', float('nan')):.2f}", flush=True)
  del hf
  gc.collect()
  if cuda:
    torch.cuda.empty_cache()


# --- 3. PPO iteration split ------------------------------------------------------------


_WORDS = [a + b + c for a in ("ka", "lo", "mi", "su", "te", "ra", "no", "vi", "de", "po")
          for b in ("", "n", "r", "s") for c in ("", "ta", "ke", "mo")]


def toy_tokenizer(folder: str):
  """A 160-piece sentencepiece tokenizer on made-up words, whose ``decode_generated`` folds
  ids it does not have onto its word pieces (random models sample the whole vocabulary;
  folding gives answers of realistic length to encode for the PM)."""
  rng = np.random.default_rng(0)
  text = [" ".join(rng.choice(_WORDS, 12)) for _ in range(2000)]
  base = train_tokenizer(text, model_prefix=os.path.join(folder, "tok"), vocab_size=160,
                         byte_fallback=False)

  class FoldingTokenizer(Tokenizer):
    """``Tokenizer`` whose generated ids past its vocabulary fold onto its word pieces."""

    def __init__(self, processor, path):
      super().__init__(processor, path)
      sp = processor
      self.words = np.array([i for i in range(sp.get_piece_size())
                             if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)
                                     or sp.is_unused(i))])

    def decode_generated(self, ids):
      ids = [int(i) for i in ids]
      ids = [i if i < self.vocab_size else int(self.words[i % len(self.words)]) for i in ids]
      return super().decode_generated(ids)

  return FoldingTokenizer(spm.SentencePieceProcessor(model_file=base.path), base.path)


def ppo_requests(tok, n: int, max_tokens: int):
  """``n`` one-turn requests whose rendered prompts have as many ids as fit in
  ``max_tokens`` (whole words; at least one word)."""
  rng = np.random.default_rng(1)
  requests, ids = [], []
  for _ in range(n):
    words, turns, p = [], None, None
    while True:
      cand = (Turn(HUMAN, " ".join(words + [rng.choice(_WORDS)]) + "?"),)
      ids_c = cc.initial_prompt(cand).token_ids(tok)
      if turns is not None and len(ids_c) > max_tokens:
        break
      words, turns, p = cand[0].text[:-1].split(" "), cand, ids_c
    requests.append(turns)
    ids.append(p)
  return requests, ids


def scalar_params_from(lm_params, cfg: models.ModelConfig, seed: int = 1):
  """A scalar-head model's parameters: the LM's trunk (copied) and a random head (std
  ``init_std``), as a preference model starts from the pretrained LM (Bai et al. 2022)."""
  head = np.random.default_rng(seed).normal(0.0, cfg.init_std, (cfg.d_model,))
  return {"backbone": jax.tree.map(jnp.copy, lm_params),
          "head_w_d": jnp.asarray(head, cfg.jnp_param_dtype),
          "head_b": jnp.zeros((), jnp.float32)}


def bench_ppo(sh: Shapes, graphdef, params, report: Report) -> None:
  """The real learner's rollout + learn at the benchmark shape; the mean time split.

  ``graphdef, params``: the LM (the frozen reference; the policy starts as a copy). The
  reward model is that LM's trunk with a random scalar head, the value model a copy of it
  (as the program does when ``value_model`` is unset)."""
  clock = CompileClock.get()
  cfg_m = sh.model
  cfg = ppo_lib.PPOConfig(rollout_batch=sh.ppo_rollout, minibatch_size=sh.ppo_minibatch,
                          ppo_epochs=sh.ppo_epochs, max_new_tokens=sh.ppo_new,
                          temperature=1.0, top_p=1.0, seed=0)
  mesh = make_mesh(1, 1, 1)
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as d:
    tok = toy_tokenizer(d)
    requests, prompt_ids = ppo_requests(tok, sh.ppo_rollout, sh.ppo_prompt)
    assert tok.vocab_size <= cfg_m.vocab_size
    pgraph = graphdef
    ref_params = jax.device_put(params, models.param_shardings(cfg_m, mesh, "lm"))
    rgraph = models.abstract(cfg_m, "scalar")[0]
    rm_params = jax.device_put(scalar_params_from(ref_params, cfg_m),
                               models.param_shardings(cfg_m, mesh, "scalar"))
    tx, _ = make_optimizer(total_steps=1000, learning_rate=1e-6, schedule="constant")
    roles = {"policy": "lm", "value": "scalar"}
    layout = trainer.state_layout(
        mesh, {r: models.abstract(cfg_m, k)[1] for r, k in roles.items()},
        {r: models.param_shardings(cfg_m, mesh, k) for r, k in roles.items()}, tx)
    reward = RewardModel(rgraph, rm_params, tok, mesh=mesh, batch_size=cfg.rollout_batch)
    learner = ppo_lib.PPOLearner(
        cfg, mesh=mesh, graphdefs={"policy": pgraph, "value": rgraph, "reward": rgraph},
        ref_params=ref_params, reward=reward, optimizer=tx, state_shardings=layout.shardings)
    # Like the program: the policy starts as a copy of the reference, the value model as
    # a copy of the reward model (copies: the learner donates the state).
    state = layout.create({"policy": jax.tree.map(jnp.copy, ref_params),
                           "value": jax.tree.map(jnp.copy, rm_params)})
    beta = learner.replicated(jnp.float32(0.05))
    length = ppo_lib.prompt_length_bucket(prompt_ids, cfg.max_new_tokens)
    n_policy, n_value = (models.count_params(state.params[k]) for k in ("policy", "value"))
    info = {"model": "1B-shaped" if cfg_m == M1B else "tiny", "vocab_size": cfg_m.vocab_size,
            "tokenizer_pieces": tok.vocab_size, "policy_params": n_policy,
            "value_params": n_value, "reward_params": models.count_params(rm_params),
            "rollout_batch": cfg.rollout_batch, "minibatch_size": cfg.minibatch_size,
            "ppo_epochs": cfg.ppo_epochs, "optimizer_steps": cfg.steps_per_iteration,
            "max_new_tokens": cfg.max_new_tokens,
            "prompt_tokens_mean": float(np.mean([len(p) for p in prompt_ids])),
            "row_length_bound": length, "setup_s": time.perf_counter() - t0,
            "iterations": []}
    with jax.set_mesh(mesh):
      for it in range(sh.ppo_warmup + sh.ppo_timed):
        m = {"iteration": it, "timed": it >= sh.ppo_warmup}
        with clock.span(m, "compile_s"):
          t0 = time.perf_counter()
          ro = learner.rollout(state.params, prompt_ids, requests, it, beta, length)
          t1 = time.perf_counter()
          state, learn_m = learner.learn(state, ro, it)
          jax.block_until_ready(state)
          t2 = time.perf_counter()
        m.update(generation_s=ro.metrics["time/generation_s"],
                 score_s=ro.metrics["time/score_s"], rollout_s=t1 - t0, learn_s=t2 - t1,
                 iteration_s=t2 - t0,
                 response_length=ro.metrics.get("env/response_length"),
                 rollout_row_length=int(getattr(ro, "data", {}).get(
                     "tokens", np.zeros((0, 0))).shape[1]),
                 loss=float(learn_m.get("loss", float("nan"))))
        m["generation_share"] = m["generation_s"] / m["iteration_s"]
        info["iterations"].append(m)
        print(f"  ppo iteration {it} ({'timed' if m['timed'] else 'warm-up'}): "
              f"{m['iteration_s']:.2f} s = generation {m['generation_s']:.2f} + score "
              f"{m['score_s']:.2f} + learn {m['learn_s']:.2f} (compile {m['compile_s']:.1f}"
              f" s) | rows {m['rollout_row_length']} tokens", flush=True)
        report.data["ppo"] = info
        report.save()
  timed = [m for m in info["iterations"] if m["timed"]]
  mean = lambda k: float(np.mean([m[k] for m in timed]))  # noqa: E731
  info.update({k: mean(k) for k in ("generation_s", "score_s", "learn_s", "iteration_s")})
  info["generation_share"] = info["generation_s"] / info["iteration_s"]
  info["score_share"] = info["score_s"] / info["iteration_s"]
  info["learn_share"] = info["learn_s"] / info["iteration_s"]
  # host work between the phases (rollout bookkeeping, the state's ready wait)
  info["other_s"] = info["iteration_s"] - info["generation_s"] - info["score_s"] - info[
      "learn_s"]
  info["other_share"] = info["other_s"] / info["iteration_s"]
  info["compile_s_in_timed"] = float(sum(m["compile_s_backend"] for m in timed))
  info["first_iteration_s"] = info["iterations"][0]["iteration_s"]
  report.data["ppo"] = info
  report.save()


# --- Summary ---------------------------------------------------------------------------


def _verdict(value, goal, at_least: bool) -> str:
  if value is None:
    return "not measured"
  ok = value >= goal if at_least else value <= goal
  return "met" if ok else "NOT met"


def goals(report: Report, sh: Shapes) -> dict:
  dec, ppo = report.data["decode"], report.data["ppo"]
  b1, bmax = str(min(sh.batches)), str(max(sh.batches))
  mbu = dec.get(b1, {}).get("mbu")
  roof = dec.get(bmax, {}).get("roofline_ratio")
  share = ppo.get("generation_share")
  out = {
      f"mbu_at_batch_{b1}": {"value": mbu, "goal": f">= {GOALS['mbu_b1']}",
                             "verdict": _verdict(mbu, GOALS["mbu_b1"], True)},
      f"roofline_ratio_at_batch_{bmax}": {
          "value": roof, "goal": f">= {GOALS['roofline_bmax']}",
          "verdict": _verdict(roof, GOALS["roofline_bmax"], True)},
      "ppo_generation_share": {"value": share, "goal": f"<= {GOALS['generation_share']}",
                               "verdict": _verdict(share, GOALS["generation_share"], False)}}
  if report.data["meta"]["peaks"]["placeholder"]:
    for k in ("mbu_at_batch_" + b1, "roofline_ratio_at_batch_" + bmax):
      out[k]["verdict"] += " (placeholder peaks: meaningless)"
  return out


def _params(n: int) -> str:
  return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _f(x, fmt: str) -> str:
  return "-" if x is None else format(x, fmt)


def markdown(report: Report, sh: Shapes) -> str:
  d = report.data
  meta, pk = d["meta"], d["meta"]["peaks"]
  lines = [f"## GPU benchmark: {meta['model_name']} ({_params(meta['params'])} params, "
           f"{sh.model.param_dtype}) on {pk['device_kind']}, jax {meta['jax']}",
           f"peaks: {pk['flops'] / 1e12:.0f} TFLOP/s, {pk['bandwidth'] / 1e12:.2f} TB/s"
           + (" (PLACEHOLDERS, --smoke: MBU and roofline numbers mean nothing)"
              if pk["placeholder"] else ""), "",
           f"### Decode: prompt {sh.prompt} + {sh.new} new tokens, greedy, forced length", "",
           "| batch | ours decode tok/s | ours generate tok/s | HF generate tok/s | ours/HF "
           "| ms/step | MBU | roofline ratio | compile s (jax events) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  peer = d["peer"].get("batches", {})
  for b in sh.batches:
    r, p = d["decode"].get(str(b), {}), peer.get(str(b), {})
    lines.append(
        f"| {b} | {_f(r.get('decode_tok_s'), ',.0f')} | {_f(r.get('generate_tok_s'), ',.0f')}"
        f" | {_f(p.get('hf_generate_tok_s'), ',.0f')} | {_f(p.get('ours_over_hf'), '.2f')}"
        f" | {_f(r.get('step_s') and 1e3 * r['step_s'], '.3f')} | {_f(r.get('mbu'), '.2f')}"
        f" | {_f(r.get('roofline_ratio'), '.2f')} | {_f(r.get('compile_s'), '.1f')} "
        f"({_f(r.get('compile_events_s'), '.1f')}) |")
  if d["peer"].get("skipped"):
    lines.append(f"\npeer: {d['peer']['skipped']}")
  ppo = d["ppo"]
  if "iteration_s" in ppo:
    lines += ["", f"### PPO iteration ({ppo['model']}: vocab {ppo['vocab_size']}, rollout "
              f"{ppo['rollout_batch']} x {ppo['max_new_tokens']} new tokens after "
              f"~{ppo['prompt_tokens_mean']:.0f}-token prompts, minibatch "
              f"{ppo['minibatch_size']}, {ppo['ppo_epochs']} epochs = "
              f"{ppo['optimizer_steps']} steps; mean of "
              f"{sum(m['timed'] for m in ppo['iterations'])} iterations)", "",
              "| phase | seconds | share |", "|---|---:|---:|"]
    for k in ("generation", "score", "learn", "other"):
      lines.append(f"| {k} | {ppo[k + '_s']:.3f} | {ppo[k + '_share']:.2f} |")
    lines.append(f"| iteration | {ppo['iteration_s']:.3f} | 1.00 |")
    if ppo["compile_s_in_timed"] > 0:
      lines.append(f"\nnote: {ppo['compile_s_in_timed']:.1f} s of XLA compiles fell inside "
                   "the timed iterations (a new shape bucket); the split includes them.")
  lines += ["", "### Goals", "", "| goal | value | target | verdict |", "|---|---:|---|---|"]
  for k, g in d["goals"].items():
    lines.append(f"| {k} | {_f(g['value'], '.3f')} | {g['goal']} | {g['verdict']} |")
  if d["errors"]:
    lines += ["", "### Errors"] + [f"- {k}: {v.strip().splitlines()[-1]}"
                                   for k, v in d["errors"].items()]
  return "\n".join(lines)


# --- Main ------------------------------------------------------------------------------


def run(smoke: bool = False, out: str | None = None, only: tuple[str, ...] = SECTIONS,
        shapes: Shapes | None = None) -> dict:
  """Runs the selected sections; returns the report's data (also written to ``out``).
  ``shapes`` overrides ``GPU`` / ``SMOKE`` (tests use smaller ones)."""
  sh = shapes or (SMOKE if smoke else GPU)
  t_start = time.perf_counter()
  CompileClock.get()
  pk = peaks(smoke)
  meta = {"smoke": smoke, "peaks": pk, "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "backend": jax.default_backend(),
          "model_name": "Llama-3.2-1B-shaped" if sh.model == M1B else "tiny",
          "model": sh.model.to_dict(), "params": sh.model.num_params(),
          "prompt": sh.prompt, "new_tokens": sh.new, "batches": list(sh.batches),
          "sections": list(only), "section_s": {}}
  report = Report(out, meta)
  print(f"# {pk['device_kind']} ({jax.default_backend()}), jax {jax.__version__}, "
        f"{meta['model_name']} {sh.model.param_dtype} ({_params(meta['params'])} params), "
        f"prompt {sh.prompt} + {sh.new} new tokens, batches {list(sh.batches)}"
        + ("; --smoke: PLACEHOLDER peaks" if smoke else ""), flush=True)
  ours_tokens = {}
  graphdef, params = init_lm(sh.model, host=smoke)
  for name in SECTIONS:
    if name not in only:
      continue
    t0 = time.perf_counter()
    print(f"# section {name}", flush=True)
    try:
      if name == "decode":
        ours_tokens = bench_decode(sh, graphdef, params, pk, report)
      elif name == "peer":
        bench_peer(sh, graphdef, params, ours_tokens, report)
      else:
        gc.collect()
        bench_ppo(sh, graphdef, params, report)
    except Exception:  # pylint: disable=broad-except
      report.data["errors"][name] = traceback.format_exc()
      print(f"# section {name} FAILED:\n{report.data['errors'][name]}", flush=True)
    meta["section_s"][name] = time.perf_counter() - t0
    report.data["goals"] = goals(report, sh)
    report.save()
  meta["total_s"] = time.perf_counter() - t_start
  report.data["goals"] = goals(report, sh)
  report.save()
  print("\n" + markdown(report, sh), flush=True)
  print(f"\n# total {meta['total_s']:.1f} s; sections "
        + ", ".join(f"{k} {v:.1f} s" for k, v in meta["section_s"].items()), flush=True)
  return report.data


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true",
                 help="tiny shapes on CPU, placeholder peaks (checks the code paths)")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--only", default=",".join(SECTIONS),
                 help=f"comma-separated sections of {SECTIONS}")
  # bench_sampler.py --device gpu calls main() with its own argv: ignore what is not ours.
  args, unknown = p.parse_known_args(argv)
  if unknown:
    print(f"# ignoring arguments {unknown}", flush=True)
  only = tuple(s for s in args.only.split(",") if s)
  bad = sorted(set(only) - set(SECTIONS))
  if bad:
    p.error(f"unknown sections {bad}; expected some of {SECTIONS}")
  data = run(smoke=args.smoke, out=args.out, only=only)
  if data["errors"]:
    sys.exit(1)


if __name__ == "__main__":
  main()
