"""Chain-of-thought labels: the answer prompt scored on the reasoning's cache vs prefilled
again (issue 15, item 3).

``FeedbackModel.p_option_a`` with ``chain_of_thought=True`` samples a reasoning per
comparison prompt, then scores "(A)" / "(B)" after ``cot_answer_prompt`` (the prompt, the
trimmed reasoning, "Therefore the answer is:"). "cached" (``cot_cache=True``, the default)
cuts the reasoning's KV cache back to what it shares with the answer prompt and appends
only the rest; "re-prefill" (``cot_cache=False``) prefills every answer prompt again. The
reasoning is the same in both (same seeds); so are the probabilities up to float rounding
(checked here). "reasoning only" times the sampling of the reasoning alone, so the scoring
part of each path is its total minus that.

Needs the toy world's feedback model and tokenizer (``bash scripts/main.sh`` writes them
to ``runs/toy_world``; the committed ``checkpoints/toy_feedback`` is used when the run has
no feedback model yet). The comparisons are the judge-skill exercise's: a toy request, the
generator's complying and refusing answers, a toy comparison principle, both orders.

  python benchmarks/cot_labels.py --num_prompts 128 --batch_size 128 --repeats 3

The three variants run interleaved (round-robin, after one warm-up call of each), and the
median of ``repeats`` calls is reported.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from cai_jax import constitution as cc  # noqa: E402
from cai_jax.data.tokenizer import Tokenizer  # noqa: E402
from cai_jax.models.store import SavedModel  # noqa: E402
from cai_jax.rl.feedback import FeedbackModel  # noqa: E402
from cai_jax.sampling import Sampler  # noqa: E402
from cai_jax.toyworld import generator  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def comparison_prompts(n: int, seed: int) -> list[cc.Prompt]:
  """n CoT comparison prompts: n / 2 toy requests, each pair in both orders."""
  const = cc.load_constitution(cc.resolve_constitution_path("constitutions/toy.json"))
  rng = random.Random(seed)
  out = []
  while len(out) < n:
    r = generator.sample_request(rng, split="eval")
    good = generator.respond(r, "refuse_explain" if r.harmful else "comply", rng)
    bad = generator.respond(r, "comply" if r.harmful else "refuse_flat", rng)
    principle = rng.choice(const.comparison_principles)
    out += [cc.comparison_prompt(r.text, a, b, principle, chain_of_thought=True)
            for a, b in ((good, bad), (bad, good))]
  return out[:n]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default=None, help="feedback model (default: runs/toy_world/"
                  "feedback/model, else checkpoints/toy_feedback)")
  ap.add_argument("--tokenizer", default=os.path.join(ROOT, "runs/toy_world/data/tokenizer.model"))
  ap.add_argument("--num_prompts", type=int, default=128)
  ap.add_argument("--batch_size", type=int, default=128,
                  help="the judge's batch (label_preferences: batch_size x 2 orders)")
  ap.add_argument("--cot_max_new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()

  model = args.model or next(
      (p for p in (os.path.join(ROOT, "runs/toy_world/feedback/model"),
                   os.path.join(ROOT, "checkpoints/toy_feedback")) if SavedModel.exists(p)),
      None)
  if model is None or not os.path.exists(args.tokenizer):
    sys.exit("needs the toy world's feedback model and tokenizer: run `bash scripts/main.sh` "
             "(runs/toy_world) first")
  tok = Tokenizer.load(args.tokenizer)
  sampler = Sampler(*SavedModel.open(model).load())
  prompts = comparison_prompts(args.num_prompts, args.seed)
  kw = dict(batch_size=args.batch_size, chain_of_thought=True,
            cot_max_new_tokens=args.cot_max_new_tokens)
  judges = {"cached": FeedbackModel(sampler, tok, **kw),
            "re-prefill": FeedbackModel(sampler, tok, cot_cache=False, **kw)}
  calls = {name: (lambda j=j: j.p_option_a(prompts, seed=args.seed))
           for name, j in judges.items()}
  calls["reasoning only"] = lambda: (None, judges["cached"].reasoning(prompts, args.seed))

  print(f"model {model}, {len(prompts)} prompts, judge batch {args.batch_size}, "
        f"cot_max_new_tokens {args.cot_max_new_tokens}; load average before: "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
  results = {name: f() for name, f in calls.items()}           # warm-up (compiles)
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(args.repeats):
    for name, f in calls.items():
      t0 = time.perf_counter()
      results[name] = f()
      times[name].append(time.perf_counter() - t0)
  (p_new, r_new), (p_old, r_old) = results["cached"], results["re-prefill"]
  assert r_new == r_old == results["reasoning only"][1], "the reasoning differs"
  med = {name: float(np.median(t)) for name, t in times.items()}
  for name, t in times.items():
    print(f"{name:>15}: median {med[name]:7.2f} s  ({', '.join(f'{x:.2f}' for x in t)})")
  gen = med["reasoning only"]
  print(f"p_option_a re-prefill / cached: {med['re-prefill'] / med['cached']:.2f}x")
  print(f"scoring part (total - reasoning only): re-prefill {med['re-prefill'] - gen:.2f} s, "
        f"cached {med['cached'] - gen:.2f} s")
  c = judges["cached"].cot_counts
  print(f"max |P(A) cached - P(A) re-prefill| = {np.max(np.abs(p_new - p_old)):.2e}; "
        f"answers prefilled again on the cached path (all calls): "
        f"{c['reprefilled']} of {c['answers']}")
  print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
