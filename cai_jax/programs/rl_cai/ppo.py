"""RL-CAI policy optimisation: PPO against the preference model, with a KL penalty.

Each iteration is rollout -> learn -> log / probe / checkpoint, with the algorithm in
``cai_jax.rl.ppo`` (``PPOLearner``): the current policy answers ``rollout_batch`` prompts,
one jitted pass scores them (policy and frozen-reference log-probs, values, the preference
model's score), per-token rewards are ``score - beta * KL_t`` with a fixed or adaptive
beta, then GAE and clipped minibatch epochs update policy and value model.

Logged every iteration (``metrics.jsonl`` + TensorBoard): PM score, KL, reward, response
length, truncation and refusal rates, beta, the minibatch losses, and the time split
(``time/generation_share``: the share of the iteration spent sampling). A ``probe``
callable (gin; the toy world's ``toy_probe``) runs every ``probe_every`` iterations with
the current policy and logs e.g. the oracle's true scores on a fixed probe set next to
the PM's, so over-optimisation shows as the proxy rising while the truth falls.

Checkpoints (policy + value + optimizer state and the KL controller's state) every
``ckpt_every`` iterations; a rerun resumes and ends with the same parameters as an
uninterrupted run. A non-finite loss or reward stops the run with the last good
checkpoint kept. The final policy is saved as an LM in ``{workdir}/model``.

  python -m cai_jax.main --gin_file=runs/ppo.gin --workdir=/tmp/ppo \\
      --gin_param="ppo.policy_model='/tmp/sl_cai/model'" \\
      --gin_param="ppo.reward_model='/tmp/pm/model'" \\
      --gin_param="ppo.prompts=('/tmp/data/red_team.jsonl', '/tmp/data/helpful.jsonl')"
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from cai_jax import constitution as cc
from cai_jax import models
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.conversations import read_prompts
from cai_jax.data.dialogue import render
from cai_jax.losses import kl as kl_lib
from cai_jax.models.store import SavedModel, export_hf, save_model
from cai_jax.rl import ppo as ppo_lib
from cai_jax.rl.reward import RewardModel
from cai_jax.sharding import build_mesh
from cai_jax.train import faults, trainer
from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.metrics import MetricsWriter
from cai_jax.train.optim import make_optimizer
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC
from cai_jax.sharding.processes import fetch

_log = logging.getLogger(__name__)


def _learner(cfg: ppo_lib.PPOConfig, mesh, policy: SavedModel, rm: SavedModel,
             value: SavedModel, tok, tx, remat: str = "none"
             ) -> tuple[ppo_lib.PPOLearner, trainer.StateLayout]:
  """Loads the frozen reference and the reward model and builds the learner; also returns
  the layout of the train state (policy + value). ``remat``: ``ModelConfig.remat`` of the
  policy and value blocks in the differentiated passes (sampling, with a cache, never
  rematerialises)."""
  roles = {"policy": (policy.config, "lm"), "value": (value.config, "scalar")}
  abstract = {r: models.abstract(dataclasses.replace(c, remat=remat), k)
              for r, (c, k) in roles.items()}
  params = {r: a[1] for r, a in abstract.items()}
  layout = trainer.state_layout(
      mesh, params, {r: models.param_shardings(c, mesh, k) for r, (c, k) in roles.items()},
      tx)
  _, ref_params = policy.load(mesh=mesh, kind="lm")
  reward = RewardModel.load(rm, mesh=mesh, tokenizer=tok, batch_size=cfg.rollout_batch)
  _log.info("ppo: policy %s, value %s, reward %s parameters",
            *(f"{models.count_params(x):,}" for x in (params["policy"], params["value"],
                                                      reward.params)))
  graphdefs = {"policy": abstract["policy"][0], "value": abstract["value"][0],
               "reward": reward.graphdef}
  learner = ppo_lib.PPOLearner(cfg, mesh=mesh, graphdefs=graphdefs, ref_params=ref_params,
                               reward=reward, optimizer=tx,
                               state_shardings=layout.shardings)
  return learner, layout


def _initial_state(learner: ppo_lib.PPOLearner, value: SavedModel, rm: SavedModel,
                   layout: trainer.StateLayout, controller, ckpt: Checkpointer
                   ) -> tuple[ppo_lib.PPOState, int]:
  """The restored or fresh ``PPOState`` (train state: policy + value; KL controller) and
  the number of finished iterations. A fresh policy starts as a copy of the frozen
  reference, a fresh value model as a copy of the reward model when it starts from it."""
  replicated = NamedSharding(learner.mesh, P())
  target = ppo_lib.PPOState(
      train=layout.target,
      kl=kl_lib.KLControllerState(beta=jax.ShapeDtypeStruct((), jnp.float32,
                                                            sharding=replicated)))

  def init():
    # Copies, not the frozen arrays themselves: the train step donates the state's arrays.
    same = value.path == rm.path
    params = {"policy": jax.tree.map(jnp.copy, learner.ref_params),
              "value": (jax.tree.map(jnp.copy, learner.reward.params) if same
                        else value.load(mesh=learner.mesh, kind="scalar")[1])}
    return ppo_lib.PPOState(train=layout.create(params),
                            kl=learner.replicated(controller.init()))

  state, _ = trainer.restore_or_init(ckpt, target, init)
  return state, int(fetch(state.train.step)) // learner.cfg.steps_per_iteration


def _sample_text(request, answer: str, metrics: dict) -> str:
  """A rollout's prompt and answer as Markdown (code blocks keep them verbatim), with the
  rollout's mean PM score and reward (``Rollout`` keeps no per-answer score)."""
  def block(text):
    return "\n".join("    " + line for line in text.strip().splitlines()) or "    (empty)"
  return (f"**Prompt**\n\n{block(render(request))}\n\n**Response**\n\n{block(answer)}\n\n"
          f"**Rollout mean**: PM score {metrics['env/pm_score']:.4f}, "
          f"reward {metrics['env/reward']:.4f}")


def _hparams(cfg: ppo_lib.PPOConfig, controller, optimizer: Callable, policy: SavedModel,
             rm: SavedModel, num_iterations: int) -> dict:
  """The run's hyperparameters (``MetricsWriter.hparams``)."""
  return {"program": "ppo", "num_iterations": num_iterations, "ppo": cfg,
          "kl": {"controller": type(controller).__name__, **dataclasses.asdict(controller)},
          "optimizer": trainer.optimizer_hparams(optimizer), "policy_model": policy.path,
          "reward_model": rm.path, "model": policy.config.to_dict(),
          **({"memory": dataclasses.asdict(m)} if (m := trainer.memory_options())
             != trainer.MemoryOptions() else {})}


def _iteration(learner: ppo_lib.PPOLearner, controller, state: ppo_lib.PPOState,
               prompt_ids: list, requests: list, it: int, length: int, writer: MetricsWriter
               ) -> tuple[ppo_lib.PPOState, dict]:
  """One PPO iteration: rollout -> learn -> KL controller update; returns the new state
  and the iteration's metrics (environment, losses, beta, time split), and logs the
  rollout's first prompt and answer as text (``rollout/sample``) at step ``it + 1``."""
  t0 = time.perf_counter()
  ro = learner.rollout(state.train.params, prompt_ids, requests, it, state.kl.beta, length)
  writer.text(it + 1, "rollout/sample", _sample_text(requests[0], ro.answers[0], ro.metrics))
  t_learn = time.perf_counter()
  train, learn_m = learner.learn(state.train, ro, it)
  # The controller's update runs on host values, then goes back to every device (an eager
  # op between a replicated global array and a local scalar is not checkpointable in a
  # multi-process run).
  host_kl = jax.tree.map(lambda x: np.asarray(fetch(x)), state.kl)
  kl = learner.replicated(jax.tree.map(np.asarray, controller.update(
      host_kl, np.float32(ro.kl_mean), learner.cfg.rollout_batch)))
  t_end = time.perf_counter()
  return ppo_lib.PPOState(train=train, kl=kl), {
      **ro.metrics, **learn_m, "kl/beta": float(fetch(kl.beta)),
      "time/learn_s": t_end - t_learn, "time/iteration_s": t_end - t0,
      "time/generation_share": ro.metrics["time/generation_s"] / (t_end - t0)}


def _probe(probe: Callable | None, learner: ppo_lib.PPOLearner, params, writer,
           it: int) -> None:
  """Runs the probe on the current policy and logs it (``probe/*``) at iteration ``it``."""
  if probe is None:
    return
  t = time.perf_counter()
  m = probe(learner.sampler(params), learner.tok, learner.reward.score)
  writer.write(it, {**{f"probe/{k}": v for k, v in m.items()},
                    "time/probe_s": time.perf_counter() - t})
  _log.info("ppo: iteration %d probe %s", it, {k: round(float(v), 4) for k, v in m.items()})


def _save(workdir: str, params, policy: SavedModel, tok, rm: SavedModel,
          num_iterations: int, hf_export: bool) -> None:
  """Saves the final policy as an LM (and a Hugging Face folder) and marks the run done."""
  save_model(trainer.model_dir(workdir), params, policy.config,
             info={"tokenizer_path": tok.path, "program": "ppo", "init_from": policy.path,
                   "reward_model": rm.path, "num_iterations": num_iterations})
  if hf_export:
    export_hf(params, policy.config, paths.join(workdir, trainer.HF_DIR),
              tokenizer_path=tok.path)
  workdir_lib.mark_done(workdir, f"iteration {num_iterations}\n")


@gin.configurable
@program("ppo",
         inputs=("policy_model", "reward_model", "prompts", "value_model", "tokenizer_path"),
         cosmetic=COSMETIC, marks_done=True)
def ppo(workdir: str, *, policy_model: str = gin.REQUIRED, reward_model: str = gin.REQUIRED,
        prompts: str | Sequence[str] = gin.REQUIRED, value_model: str | None = None,
        tokenizer_path: str | None = None, num_iterations: int = 100,
        rollout_batch: int = 64, minibatch_size: int = 16, ppo_epochs: int = 2,
        max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
        kl_coef: float = 0.05, kl_target: float | None = None, kl_horizon: float = 10000.0,
        kl_estimator: str = "k1", gamma: float = 1.0, lam: float = 0.95,
        clip_eps: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.5,
        whiten_advantages: bool = True, truncated_score: float | None = None,
        refusal_markers: Sequence[str] = ppo_lib.DEFAULT_REFUSAL_MARKERS,
        probe: Callable | None = None, probe_every: int = 5,
        optimizer: Callable = make_optimizer, seed: int = 0,
        mesh_shape: Sequence[int] = (-1, 1, 1), ckpt_every: int = 5,
        keep_checkpoints: int = 2, hf_export: bool = False) -> str:
  """Optimises the policy with PPO against the preference model; returns ``model/``.

  Args:
    workdir: output folder: ``checkpoints/``, ``metrics.jsonl``, the final ``model/``.
    policy_model: the SL-CAI LM: the policy's init and the frozen KL reference.
    reward_model: the trained preference model (a saved scalar model).
    prompts: one or more prompt JSONL files, pooled (red-team and helpfulness prompts).
    value_model: the value model's init (a saved scalar or LM model); default: the PM.
    tokenizer_path: default: the policy's tokenizer.
    num_iterations: rollout + learn iterations.
    rollout_batch: prompts per iteration; minibatch_size: rows per optimizer step;
      ppo_epochs: passes over each rollout.
    max_new_tokens, temperature, top_p: rollout sampling (temperature 1: the policy's
      own distribution, which the KL estimate assumes).
    kl_coef: beta (the initial one with ``kl_target``).
    kl_target, kl_horizon: adaptive controller (Ziegler et al. 2019); None: fixed beta.
    kl_estimator: "k1" or "k3" per-token estimator in the reward.
    gamma, lam: GAE; clip_eps, value_clip, vf_coef: the PPO losses.
    whiten_advantages: normalise advantages per rollout.
    truncated_score: if set, the PM score of answers that hit ``max_new_tokens`` without
      ending is replaced by this value (a common guard against rambling).
    refusal_markers: substrings (lower case) counted as a refusal in ``env/refusal_rate``.
    probe: optional ``probe(sampler, tokenizer, score_fn) -> dict`` (see module doc).
    probe_every: iterations between probes (and at the start and end).
    optimizer: ``optimizer(total_steps=...) -> (optax transform, schedule)``.
    seed: prompt order, sampling and minibatch shuffles derive from it.
    mesh_shape: (data, fsdp, tensor).
    ckpt_every, keep_checkpoints: checkpoint cadence in iterations.
    hf_export: also write the final policy as a Hugging Face folder ``{workdir}/hf``.
  """
  if workdir_lib.skip_if_done(workdir, "ppo"):
    return trainer.model_dir(workdir)
  memory = trainer.memory_options()
  cfg = ppo_lib.PPOConfig(rollout_batch, minibatch_size, ppo_epochs, max_new_tokens,
                          temperature, top_p, kl_estimator, gamma, lam, clip_eps, value_clip,
                          vf_coef, whiten_advantages, truncated_score, tuple(refusal_markers),
                          seed, grad_accum_steps=memory.grad_accum_steps)
  controller = ppo_lib.kl_controller(kl_coef, kl_target, kl_horizon)

  # --- Models, prompts, the learner ----------------------------------------------------
  policy = SavedModel.open(policy_model, role="ppo.policy_model").require_kind(
      "lm", "ppo.policy_model")
  rm = SavedModel.open(reward_model, role="ppo.reward_model").require_kind(
      "scalar", "ppo.reward_model")
  value = SavedModel.open(value_model or reward_model, role="ppo.value_model")
  tok = policy.tokenizer(tokenizer_path)
  pool = [turns for p in ([prompts] if isinstance(prompts, str) else prompts)
          for _, turns in read_prompts(workdir_lib.resolve_input(p))]
  prompt_ids = [cc.initial_prompt(t).token_ids(tok) for t in pool]
  mesh = build_mesh(mesh_shape)
  tx, lr = optimizer(total_steps=num_iterations * cfg.steps_per_iteration)
  learner, layout = _learner(cfg, mesh, policy, rm, value, tok, tx, memory.remat)
  ckpt = Checkpointer(paths.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints)
  state, start = _initial_state(learner, value, rm, layout, controller, ckpt)
  _log.info("ppo: %d prompts; starting at iteration %d of %d", len(pool), start, num_iterations)

  # --- Loop: rollout -> learn -> log, probe, checkpoint ---------------------------------
  length = ppo_lib.prompt_length_bucket(prompt_ids, max_new_tokens)
  bar = tqdm.tqdm(total=num_iterations, initial=start, desc="ppo", unit="iter",
                  mininterval=1.0, disable=None)
  with MetricsWriter(workdir, resume_step=start) as writer, jax.set_mesh(mesh):
    writer.hparams(_hparams(cfg, controller, optimizer, policy, rm, num_iterations))
    if start == 0:
      _probe(probe, learner, state.train.params, writer, 0)
    for it in range(start, num_iterations):
      idx = ppo_lib.iteration_prompts(len(pool), rollout_batch, seed, it)
      state, m = _iteration(learner, controller, state, [prompt_ids[i] for i in idx],
                            [pool[i] for i in idx], it, length, writer)
      m["lr"] = float(lr(int(fetch(state.train.step))))
      writer.write(it + 1, m)
      bar.update(1)
      bar.set_postfix(pm=f"{m['env/pm_score']:.2f}", kl=f"{m['env/kl']:.2f}")
      if (it + 1) % probe_every == 0 or it + 1 == num_iterations:
        _probe(probe, learner, state.train.params, writer, it + 1)
      if (it + 1) % ckpt_every == 0 or it + 1 == num_iterations:
        ckpt.save(int(fetch(state.train.step)), state, force=True, metadata={
            "iteration": it + 1, "model_config": policy.config.to_dict()})
      faults.exit_if_due(it + 1, wait=ckpt.wait)
  bar.close()
  ckpt.close()
  _save(workdir, state.train.params["policy"], policy, tok, rm, num_iterations, hf_export)
  return trainer.model_dir(workdir)

