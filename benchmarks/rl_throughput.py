"""RL-CAI throughput on CPU (issue 6): labeling pairs/s, PM and PPO step throughput, and the
generation share of a PPO iteration, on the trained toy-world models.

Needs a finished toy-world run (``bash scripts/main.sh``) for realistic answer lengths: the
SL-CAI policy, the base model as judge, the preference model.

  python benchmarks/rl_throughput.py --run_dir runs/toy_world

Measured (after one warm-up call of each shape, so compilation is excluded):
* labeling: ``label_preferences``' batch function on 64 red-team prompts (2 answers each,
  both orders judged): pairs/s and the generation share;
* PM: optimizer steps/s of the soft-label Bradley-Terry step (16 pairs x 192 tokens) and
  its ratio to a forward-only reward pass on the same batch (the backward's overhead);
* PPO: ``ppo`` for 4 iterations (64 rollouts, 96 new tokens, 2 epochs x 4 minibatches);
  the mean time split of iterations 2-4: sampling, scoring, learning.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cai_jax import constitution as cc  # noqa: E402
from cai_jax.data.conversations import read_prompts  # noqa: E402
from cai_jax.data.loaders import preference_loader  # noqa: E402
from cai_jax.data.records import read_records  # noqa: E402
from cai_jax.models.scores import pair_rewards  # noqa: E402
from cai_jax.models.store import SavedModel  # noqa: E402
from cai_jax.programs.rl_cai import label as lp  # noqa: E402
from cai_jax.programs.rl_cai.ppo import ppo  # noqa: E402
from cai_jax.programs.rl_cai.preference_model import pm_loss_fn  # noqa: E402
from cai_jax.rl.feedback import FeedbackModel  # noqa: E402
from cai_jax.sampling import Sampler  # noqa: E402
from cai_jax.train import state as state_lib  # noqa: E402
from cai_jax.train.metrics import read_jsonl  # noqa: E402
from cai_jax.train.optim import make_optimizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_labeling(run: str, n: int = 64, repeats: int = 2) -> dict:
  sl_cai = SavedModel.open(os.path.join(run, "sl_cai", "model"), role="the SL-CAI policy")
  base = SavedModel.open(os.path.join(run, "base", "model"), role="the feedback model")
  tok = sl_cai.tokenizer()
  const = cc.load_constitution(os.path.join(REPO, "constitutions", "toy.json"))
  prompts = read_prompts(os.path.join(run, "data", "red_team.jsonl"))
  feedback = FeedbackModel(Sampler(*base.load()), tok, batch_size=2 * n,
                           chain_of_thought=False, cot_max_new_tokens=64, cot_temperature=0.0)
  policy = Sampler(*sl_cai.load())
  kw = dict(principle_seed=0, num_principles=1, swap_orders=True, clamp=None, exemplars=(),
            sample_kw=dict(max_new_tokens=96, temperature=1.0, top_p=1.0))
  items = lambda k: [(k * n + i, pid, req) for i, (pid, req)  # noqa: E731
                     in enumerate(prompts[k * n:(k + 1) * n])]
  label = lp._label_batch  # noqa: SLF001
  label(policy, None, feedback, tok, const, items(0), seed=0, **kw)  # warm-up
  pairs, gen, jud, wall = 0, 0.0, 0.0, 0.0
  for k in range(1, repeats + 1):
    t0 = time.perf_counter()
    rows, t = label(policy, None, feedback, tok, const, items(k), seed=k, **kw)
    wall += time.perf_counter() - t0
    pairs += len(rows)
    gen += t["generation_s"]
    jud += t["judge_s"]
  return {"prompts": n * repeats, "pairs": pairs, "pairs_per_s": pairs / wall,
          "generation_share": gen / wall, "judge_share": jud / wall}


def bench_pm(run: str, steps: int = 10) -> dict:
  pm = SavedModel.open(os.path.join(run, "pm", "model"), role="the preference model")
  graph, params = pm.load()
  tok = pm.tokenizer()
  src = read_records(os.path.join(run, "label", "records"), "pref_data", split="train")
  batch = next(iter(preference_loader(src, tok, seq_len=192, batch_size=16, seed=0)))
  batch = {k: v for k, v in batch.items() if k != "num_truncated"}
  tx, _ = make_optimizer(total_steps=steps, learning_rate=1e-5)
  step = state_lib.make_train_step(pm_loss_fn(graph), tx)
  state = state_lib.create_state(params, tx)
  fwd = jax.jit(lambda p, b: pair_rewards(graph, p, b["tokens"], b["loss_mask"]))
  state, m = step(state, batch, jax.random.key(0))
  jax.block_until_ready(m["loss"])
  jax.block_until_ready(fwd(state.params, batch))
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch, jax.random.key(0))
  jax.block_until_ready(m["loss"])
  t_step = (time.perf_counter() - t0) / steps
  t0 = time.perf_counter()
  for _ in range(steps):
    r = fwd(state.params, batch)
  jax.block_until_ready(r)
  t_fwd = (time.perf_counter() - t0) / steps
  return {"pairs_per_step": 16, "seq_len": 192, "steps_per_s": 1.0 / t_step,
          "pairs_per_s": 16 / t_step, "step_over_forward": t_step / t_fwd}


def bench_ppo(run: str, iterations: int = 4) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    cwd = os.getcwd()
    os.chdir(run)
    try:
      ppo(tmp, policy_model="sl_cai/model", reward_model="pm/model",
          prompts=("data/red_team.jsonl", "data/helpful.jsonl"), num_iterations=iterations,
          rollout_batch=64, minibatch_size=16, ppo_epochs=2, max_new_tokens=96,
          kl_coef=0.05, ckpt_every=1000, mesh_shape=(1, 1, 1),
          optimizer=lambda total_steps: make_optimizer(total_steps=total_steps,
                                                       learning_rate=1e-4,
                                                       schedule="constant"))
    finally:
      os.chdir(cwd)
    rows = [r for r in read_jsonl(os.path.join(tmp, "metrics.jsonl")) if "env/kl" in r][1:]
  mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
  return {"iterations_timed": len(rows), "rollouts_per_iteration": 64,
          "optimizer_steps_per_iteration": 8, "iteration_s": mean("time/iteration_s"),
          "rollouts_per_s": 64 / mean("time/iteration_s"),
          "generation_share": mean("time/generation_share"),
          "score_share": mean("time/score_s") / mean("time/iteration_s"),
          "learn_share": mean("time/learn_s") / mean("time/iteration_s"),
          "mean_response_tokens": mean("env/response_length")}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--run_dir", default="runs/toy_world")
  ap.add_argument("--out", default=None, help="write the results as JSON here")
  args = ap.parse_args()
  run = os.path.abspath(args.run_dir)
  res = {"device": str(jax.devices()[0]), "labeling": bench_labeling(run),
         "preference_model": bench_pm(run), "ppo": bench_ppo(run)}
  print(json.dumps(res, indent=2))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  main()
