"""The toy SL-CAI generation workload on its first N prompts: wall time, prompts/s, XLA
compilations, generated tokens and a digest of the final revisions.

Runs ``generate_sl`` with toy_world.gin's settings (4 rounds, context 'latest', greedy, at
most 96 new tokens per turn, batch 128) on the base model of a finished main run. To
compare two versions of the code, run it once from each checkout (e.g. a ``git worktree``
of the older commit) with ``PYTHONPATH`` pointing at that checkout:

  PYTHONPATH=. .venv/bin/python benchmarks/sl_gen_workload.py --run_dir runs/toy_world \
      --num_prompts 256

``--static`` runs static batches instead of continuous batching (``generate_sl.continuous``);
``--both 3`` runs static and continuous alternately in one process, three rounds, so the
rounds after the first compare the two without compilation.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402


def _run_once(run: str, args, continuous: bool, compiles: list) -> str:
  from cai_jax.programs.sl_cai.generate import generate_sl  # after the listener
  import cai_jax
  before = compiles[0]
  with tempfile.TemporaryDirectory() as work:
    t0 = time.perf_counter()
    generate_sl(work, model=f"{run}/base/model", prompts_path=f"{run}/data/red_team.jsonl",
                constitution_path=os.path.abspath(args.constitution),
                tokenizer_path=f"{run}/data/tokenizer.model", num_rounds=4, context="latest",
                exemplars=False, max_new_tokens=96, temperature=0.0, shard_size=256,
                batch_size=args.batch_size, max_prompts=args.num_prompts, seed=0,
                continuous=continuous)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for f in sorted(glob.glob(f"{work}/shards/*.jsonl"))
            for line in open(f, encoding="utf-8")]
  digest = hashlib.sha256("\n".join(r["final"] for r in rows).encode()).hexdigest()[:12]
  return (f"code {os.path.dirname(cai_jax.__file__)} "
          f"({'continuous' if continuous else 'static'}): {args.num_prompts} prompts in "
          f"{wall:.1f} s ({args.num_prompts / wall:.2f} prompts/s), "
          f"{compiles[0] - before} compilations, "
          f"{sum(r['num_generated_tokens'] for r in rows)} generated tokens, finals {digest}")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--run_dir", default="runs/toy_world")
  p.add_argument("--num_prompts", type=int, default=256)
  p.add_argument("--constitution", default="constitutions/toy.json")
  p.add_argument("--batch_size", type=int, default=128,
                 help="rows decoded together (toy_world.gin: 128); the data set does not "
                      "depend on it (row seeds), the finals digest shows it")
  p.add_argument("--static", action="store_true",
                 help="static batches only (generate_sl.continuous=False)")
  p.add_argument("--both", type=int, default=0, metavar="N",
                 help="in one process, N rounds of static then continuous; the first "
                      "round includes each mode's compilation, later ones do not")
  args = p.parse_args(argv)
  compiles = [0]

  def listener(name, *_, **__):
    compiles[0] += name == "/jax/core/compile/backend_compile_duration"

  jax.monitoring.register_event_duration_secs_listener(listener)
  run = os.path.abspath(args.run_dir)
  if args.both:
    for r in range(args.both):
      for continuous in (False, True):
        print(f"round {r}: " + _run_once(run, args, continuous, compiles), flush=True)
  else:
    print(_run_once(run, args, not args.static, compiles))


if __name__ == "__main__":
  main()
