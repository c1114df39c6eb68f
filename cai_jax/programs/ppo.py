"""RL-CAI policy optimisation: PPO against the preference model, with a KL penalty.

Every iteration (Bai et al. 2022, Sec. 4; Ziegler et al. 2019; Stiennon et al. 2020):

1. **Rollout.** ``rollout_batch`` prompts (a deterministic function of ``(seed,
   iteration)``) are answered by the current policy with the fast sampler.
2. **Score.** One jitted pass gives the policy's and the frozen reference's (SL-CAI)
   log-probs of the sampled tokens, the value model's estimates, and the preference
   model's score of each answer (read at its last token, the format it was trained on).
   Per-token rewards are ``-beta * KL_t`` plus the PM score at the last token
   (``losses.kl_penalized_rewards``); ``beta`` comes from a fixed or an adaptive
   controller (``kl_target``).
3. **Learn.** GAE advantages (whitened) and returns, then ``ppo_epochs`` passes over
   shuffled minibatches with the clipped policy loss and the clipped value loss.

Logged every iteration (``metrics.jsonl`` + TensorBoard): PM score, KL, reward, response
length, truncation and refusal rates, the controller's beta, the minibatch losses, and the
time split: ``time/generation_share`` is the share of the iteration spent sampling. A
``probe`` callable (gin; the toy world's ``toy_probe``) is called every ``probe_every``
iterations with the current policy and logs e.g. the oracle's true scores on a fixed probe
set next to the PM's, so over-optimisation shows as the proxy rising while the truth falls.

Checkpoints (policy + value + optimizer state, beta) every ``ckpt_every`` iterations;
a rerun resumes and ends with the same parameters as an uninterrupted run. A non-finite
loss or reward stops the run with the last good checkpoint kept. The final policy is saved
as an LM in ``{workdir}/model``.

  python -m cai_jax.main --gin_file=runs/ppo.gin --workdir=/tmp/ppo \
      --gin_param="ppo.policy_from='/tmp/sl_cai/model'" \
      --gin_param="ppo.reward_model='/tmp/pm/model'" \
      --gin_param="ppo.prompts=('/tmp/data/red_team.jsonl', '/tmp/data/helpful.jsonl')"
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from cai_jax import constitution as cc
from cai_jax import models
from cai_jax.data.dialogue import Turn
from cai_jax.data.loaders import encode_response
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.losses import kl as kl_lib
from cai_jax.losses import ppo as ppo_lib
from cai_jax.losses.lm import token_logprobs
from cai_jax.models.store import load_model, read_model_info, save_model
from cai_jax.programs import common
from cai_jax.programs.generate_sl import read_prompts
from cai_jax.sampling import Sampler, buckets
from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.metrics import MetricsWriter
from cai_jax.train.optim import make_optimizer

_log = logging.getLogger(__name__)

DEFAULT_REFUSAL_MARKERS = ("i can't", "i cannot", "i can not", "i won't", "sorry")


def is_refusal(text: str, markers: Sequence[str]) -> bool:
  """True if the answer contains a refusal marker (case-insensitive substring)."""
  low = text.lower()
  return any(m in low for m in markers)


# --- Arrays of a rollout -------------------------------------------------------------------


def rollout_arrays(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                   length: int, rows: int, pad_id: int) -> dict[str, np.ndarray]:
  """Right-padded ``tokens`` [rows, length] = prompt + response, and ``mask``
  [rows, length - 1] aligned with the targets ``tokens[:, 1:]``: 1 where the target is a
  response token. Rows past ``len(prompts)`` are padding (mask 0)."""
  tokens = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length - 1), np.float32)
  for i, (p, r) in enumerate(zip(prompts, responses)):
    seq = list(p) + list(r)
    tokens[i, :len(seq)] = seq
    mask[i, len(p) - 1:len(seq) - 1] = 1.0
  return {"tokens": tokens, "mask": mask}


def pm_arrays(tok: Tokenizer, requests: Sequence[tuple[Turn, ...]], answers: Sequence[str],
              rows: int) -> dict[str, np.ndarray]:
  """The preference model's input, encoded exactly as its training pairs: ``pm_tokens``
  [rows, L] and ``pm_mask`` (1 on the answer turn's tokens; the score is read at the
  last 1). Rows past ``len(answers)`` are padding."""
  encoded = [encode_response(tok, req, ans) for req, ans in zip(requests, answers)]
  length = buckets.length_bucket(max(len(ids) for ids, _ in encoded))
  tokens = np.full((rows, length), tok.pad_id, np.int32)
  mask = np.zeros((rows, length), np.float32)
  for i, (ids, m) in enumerate(encoded):
    tokens[i, :len(ids)] = ids
    mask[i, :len(m)] = m
  return {"pm_tokens": tokens, "pm_mask": mask}


# --- Pure functions -------------------------------------------------------------------------


def sequence_scores(rm_graphdef: nnx.GraphDef, rm_params: Any, pm_tokens: jax.Array,
                    pm_mask: jax.Array) -> jax.Array:
  """[B] preference-model scores, read at each answer's last token."""
  values = models.merge(rm_graphdef, rm_params)(pm_tokens)
  return models.last_token_values(values, pm_mask > 0)


def policy_and_values(graphdefs: dict[str, nnx.GraphDef], params: dict[str, Any],
                      tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(log-probs [B, T-1] of ``tokens[:, 1:]``, values [B, T-1], logits [B, T-1, V])."""
  inputs = tokens[:, :-1]
  logits = models.merge(graphdefs["policy"], params["policy"])(inputs)
  values = models.merge(graphdefs["value"], params["value"])(inputs)
  return token_logprobs(logits, tokens[:, 1:]), values, logits


def score_rollout(graphdefs: dict[str, nnx.GraphDef], params: dict[str, Any], ref_params: Any,
                  rm_params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Old log-probs, reference log-probs, values and PM scores of a rollout."""
  logp, values, _ = policy_and_values(graphdefs, params, batch["tokens"])
  ref_logits = models.merge(graphdefs["policy"], ref_params)(batch["tokens"][:, :-1])
  ref_logp = token_logprobs(ref_logits, batch["tokens"][:, 1:])
  score = sequence_scores(graphdefs["reward"], rm_params, batch["pm_tokens"],
                          batch["pm_mask"])
  return {"logp": logp, "ref_logp": ref_logp, "values": values, "score": score}


def advantages(score: jax.Array, logp: jax.Array, ref_logp: jax.Array, values: jax.Array,
               mask: jax.Array, *, beta: jax.Array, estimator: str, gamma: float, lam: float,
               whiten: bool) -> dict[str, jax.Array]:
  """KL-penalised rewards -> GAE advantages (optionally whitened) and returns."""
  rewards = kl_lib.kl_penalized_rewards(score, logp, ref_logp, mask, beta=beta,
                                        estimator=estimator)
  adv, returns = ppo_lib.gae(rewards, values, mask, gamma=gamma, lam=lam)
  if whiten:
    adv = ppo_lib.whiten(adv, mask)
  kl_seq = jnp.sum(jnp.where(mask > 0, kl_lib.kl_k1(logp, ref_logp), 0.0), axis=-1)
  return {"advantages": adv, "returns": returns, "kl_seq": kl_seq,
          "reward_seq": jnp.sum(rewards, axis=-1)}


def ppo_loss_fn(graphdefs: dict[str, nnx.GraphDef], *, clip_eps: float, value_clip: float,
                vf_coef: float) -> state_lib.LossFn:
  """Clipped policy loss + ``vf_coef`` * clipped value loss on a minibatch."""

  def loss_fn(params, batch, rng):
    del rng
    mask = batch["mask"]
    logp, values, logits = policy_and_values(graphdefs, params, batch["tokens"])
    pg, pg_m = ppo_lib.policy_loss(logp, batch["logp"], batch["advantages"], mask,
                                   clip_eps=clip_eps)
    vl, vl_m = ppo_lib.value_loss(values, batch["values"], batch["returns"], mask,
                                  clip_eps=value_clip)
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    aux = {**pg_m, **vl_m, "policy/loss": pg, "value/loss": vl,
           "policy/entropy": ppo_lib.masked_mean(entropy, mask)}
    return pg + vf_coef * vl, aux

  return loss_fn


# --- The program ----------------------------------------------------------------------------


def _prompt_order(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng(common.call_seed(seed, "prompts", epoch)).permutation(n)


def iteration_prompts(n: int, batch: int, seed: int, iteration: int) -> list[int]:
  """Prompt indices of an iteration: consecutive slices of per-epoch permutations."""
  out, pos = [], iteration * batch
  while len(out) < batch:
    epoch, offset = divmod(pos, n)
    take = min(batch - len(out), n - offset)
    out += _prompt_order(n, seed, epoch)[offset:offset + take].tolist()
    pos += take
  return out


def _controller(kl_coef: float, kl_target: float | None, kl_horizon: float):
  if kl_target is None:
    return kl_lib.FixedKLController(kl_coef)
  return kl_lib.AdaptiveKLController(init_beta=kl_coef, target=kl_target, horizon=kl_horizon)


@gin.configurable
def ppo(workdir: str, *, policy_from: str = gin.REQUIRED, reward_model: str = gin.REQUIRED,
        prompts: str | Sequence[str] = gin.REQUIRED, value_from: str | None = None,
        tokenizer_path: str | None = None, num_iterations: int = 100,
        rollout_batch: int = 64, minibatch_size: int = 16, ppo_epochs: int = 2,
        max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
        kl_coef: float = 0.05, kl_target: float | None = None, kl_horizon: float = 10000.0,
        kl_estimator: str = "k1", gamma: float = 1.0, lam: float = 0.95,
        clip_eps: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.5,
        whiten_advantages: bool = True, truncated_score: float | None = None,
        refusal_markers: Sequence[str] = DEFAULT_REFUSAL_MARKERS,
        probe: Callable | None = None, probe_every: int = 5,
        optimizer: Callable = make_optimizer, seed: int = 0,
        mesh_shape: Sequence[int] = (-1, 1, 1), ckpt_every: int = 5,
        keep_checkpoints: int = 2) -> str:
  """Optimises the policy with PPO against the preference model; returns ``model/``.

  Args:
    workdir: output folder: ``checkpoints/``, ``metrics.jsonl``, the final ``model/``.
    policy_from: the SL-CAI LM: the policy's init and the frozen KL reference.
    reward_model: the trained preference model (a saved scalar model).
    prompts: one or more prompt JSONL files (``{"prompt": ...}`` / ``{"text": HH}``),
      e.g. red-team and helpfulness prompts; they are pooled.
    value_from: the value model's init (a saved scalar or LM model); default: the PM.
    tokenizer_path: default: the policy's ``info["tokenizer_path"]``.
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
  """
  out_dir = os.path.join(workdir, "model")
  if common.is_done(workdir):
    _log.info("ppo: %s is complete, skipping", workdir)
    return out_dir
  if rollout_batch % minibatch_size:
    raise ValueError(f"rollout_batch={rollout_batch} is not a multiple of "
                     f"minibatch_size={minibatch_size}")
  kl_lib._estimator(kl_estimator)  # pylint: disable=protected-access  # fail early
  controller = _controller(kl_coef, kl_target, kl_horizon)
  mesh = common.build_mesh(tuple(mesh_shape))
  put = common.batch_putter(mesh, minibatch_size)
  put_rollout = common.batch_putter(mesh, rollout_batch)

  # --- Prompts and models -----------------------------------------------------------
  paths = [prompts] if isinstance(prompts, str) else list(prompts)
  pool = [turns for p in paths for _, turns in read_prompts(p)]
  cfg, _, info = read_model_info(policy_from)
  tok = Tokenizer.load(tokenizer_path or info["tokenizer_path"])
  prompt_ids = [cc.initial_prompt(t).token_ids(tok) for t in pool]
  value_from = value_from or reward_model
  vcfg, _, _ = read_model_info(value_from)
  rcfg, rkind, _ = read_model_info(reward_model)
  if rkind != "scalar":
    raise ValueError(f"reward_model {reward_model} is a saved {rkind!r} model, not a "
                     "preference model (scalar head)")
  pgraph, p_abstract, _ = models.abstract(cfg, "lm")
  vgraph, v_abstract, _ = models.abstract(vcfg, "scalar")
  rgraph, _, _ = models.abstract(rcfg, "scalar")
  graphdefs = {"policy": pgraph, "value": vgraph, "reward": rgraph}
  abstract_params = {"policy": p_abstract, "value": v_abstract}
  shardings = {"policy": models.param_shardings(cfg, mesh, "lm"),
               "value": models.param_shardings(vcfg, mesh, "scalar")}
  ref_params = load_model(policy_from, mesh=mesh, kind="lm")[2]
  rm_params = load_model(reward_model, mesh=mesh, kind="scalar")[2]
  _log.info("ppo: %d prompts; policy %s, value %s, reward %s parameters", len(pool),
            f"{models.count_params(p_abstract):,}", f"{models.count_params(v_abstract):,}",
            f"{models.count_params(rm_params):,}")

  # --- Train state ----------------------------------------------------------------------
  n_mb = rollout_batch // minibatch_size
  total_steps = num_iterations * ppo_epochs * n_mb
  tx, schedule = optimizer(total_steps=total_steps)
  # Fresh copies (not ref_params / rm_params): the train step donates the state's arrays.
  init_params = lambda: {  # noqa: E731
      "policy": load_model(policy_from, mesh=mesh, kind="lm")[2],
      "value": load_model(value_from, mesh=mesh, kind="scalar")[2]}
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints)
  state, meta, state_sh = common.restore_or_init(ckpt, mesh, shardings, abstract_params, tx,
                                                 init_params)
  kl_state = controller.init()
  if meta is not None:
    kl_state = kl_lib.KLControllerState(beta=jnp.float32(meta["beta"]))
  start_it = int(jax.device_get(state.step)) // (ppo_epochs * n_mb)
  step_fn = state_lib.make_train_step(
      ppo_loss_fn(graphdefs, clip_eps=clip_eps, value_clip=value_clip, vf_coef=vf_coef), tx,
      state_sharding=state_sh)
  score_fn_jit = jax.jit(functools.partial(score_rollout, graphdefs))
  adv_fn = jax.jit(functools.partial(advantages, estimator=kl_estimator, gamma=gamma, lam=lam,
                                     whiten=whiten_advantages))
  rm_score = jax.jit(functools.partial(sequence_scores, rgraph))

  def score_answers(requests: Sequence[tuple[Turn, ...]], answers: Sequence[str]) -> np.ndarray:
    """PM scores of answers (for probes), in batches of ``rollout_batch``."""
    out = []
    for i in range(0, len(answers), rollout_batch):
      arr = pm_arrays(tok, requests[i:i + rollout_batch], answers[i:i + rollout_batch],
                      rollout_batch)
      arr = put_rollout(arr)
      with jax.set_mesh(mesh):
        s = rm_score(rm_params, arr["pm_tokens"], arr["pm_mask"])
      out.append(np.asarray(jax.device_get(s))[:len(answers[i:i + rollout_batch])])
    return np.concatenate(out)

  def run_probe(it: int, params, writer) -> None:
    if probe is None:
      return
    t = time.perf_counter()
    m = probe(Sampler(pgraph, params["policy"], mesh=mesh), tok, score_answers)
    writer.write(it, {**{f"probe/{k}": v for k, v in m.items()},
                      "time/probe_s": time.perf_counter() - t})
    _log.info("ppo: iteration %d probe %s", it, {k: round(float(v), 4) for k, v in m.items()})

  # --- Loop -----------------------------------------------------------------------------
  exit_after = int(os.environ.get("CAI_JAX_FAULT_EXIT_AFTER_STEP", "0"))
  length = buckets.length_bucket(max(len(p) for p in prompt_ids) + max_new_tokens)
  bar = tqdm.tqdm(total=num_iterations, initial=start_it, desc="ppo", unit="iter",
                  mininterval=1.0, disable=None)
  with MetricsWriter(workdir) as writer, jax.set_mesh(mesh):
    if start_it == 0:
      run_probe(0, state.params, writer)
    for it in range(start_it, num_iterations):
      t0 = time.perf_counter()
      idx = iteration_prompts(len(pool), rollout_batch, seed, it)
      sampler = Sampler(pgraph, state.params["policy"], mesh=mesh)
      out = sampler.generate([prompt_ids[i] for i in idx], max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, stop_tokens=[tok.eos_id],
                             seed=common.call_seed(seed, "rollout", it))
      t_gen = time.perf_counter() - t0
      answers = [common.decode_generated(tok, t) for t in out.tokens]
      truncated = np.array([tok.eos_id not in t for t in out.tokens])
      batch = rollout_arrays([prompt_ids[i] for i in idx], out.tokens, length,
                             rollout_batch, tok.pad_id)
      batch.update(pm_arrays(tok, [pool[i] for i in idx], answers, rollout_batch))
      dev = put_rollout(batch)
      scored = score_fn_jit(state.params, ref_params, rm_params, dev)
      score = scored["score"]
      if truncated_score is not None:
        score = jnp.where(put_rollout({"t": truncated})["t"], truncated_score, score)
      adv = adv_fn(score, scored["logp"], scored["ref_logp"], scored["values"], dev["mask"],
                   beta=kl_state.beta)
      host = jax.device_get({"score": score, "kl": adv["kl_seq"], "reward": adv["reward_seq"]})
      if not all(np.all(np.isfinite(v)) for v in host.values()):
        raise FloatingPointError(f"ppo: non-finite rollout scores at iteration {it}; the "
                                 "last good checkpoint is kept")
      # One host copy of the rollout tensors; minibatches are slices of a permutation.
      data = {k: np.asarray(v) for k, v in jax.device_get({
          "tokens": dev["tokens"], "mask": dev["mask"], "logp": scored["logp"],
          "values": scored["values"], "advantages": adv["advantages"],
          "returns": adv["returns"]}).items()}
      t_learn = time.perf_counter()
      mb_metrics: list[dict] = []
      for epoch in range(ppo_epochs):
        perm = np.random.default_rng(common.call_seed(seed, "minibatch", it, epoch)
                                     ).permutation(rollout_batch)
        for j in range(n_mb):
          sel = perm[j * minibatch_size:(j + 1) * minibatch_size]
          state, m = step_fn(state, put({k: v[sel] for k, v in data.items()}),
                             jax.random.key(seed))
          m = jax.device_get(m)
          if not bool(m.pop("finite")):
            bar.close()
            raise FloatingPointError(f"ppo: non-finite loss or gradients at iteration {it} "
                                     f"(epoch {epoch}, minibatch {j}); the update was not "
                                     "applied and the last good checkpoint is kept")
          mb_metrics.append(m)
      kl_mean = float(np.mean(host["kl"]))
      kl_state = controller.update(kl_state, jnp.float32(kl_mean), rollout_batch)
      t_end = time.perf_counter()
      lengths = np.array([len(t) for t in out.tokens])
      metrics = {
          "env/pm_score": float(np.mean(host["score"])), "env/kl": kl_mean,
          "env/reward": float(np.mean(host["reward"])),
          "env/response_length": float(np.mean(lengths)),
          "env/truncated_rate": float(np.mean(truncated)),
          "env/refusal_rate": float(np.mean([is_refusal(a, refusal_markers)
                                             for a in answers])),
          "kl/beta": float(jax.device_get(kl_state.beta)),
          "lr": float(schedule(int(jax.device_get(state.step)))),
          "time/generation_s": t_gen, "time/score_s": t_learn - t0 - t_gen,
          "time/learn_s": t_end - t_learn, "time/iteration_s": t_end - t0,
          "time/generation_share": t_gen / (t_end - t0)}
      for k in mb_metrics[0]:
        metrics[k] = float(np.mean([float(m[k]) for m in mb_metrics]))
      writer.write(it + 1, metrics)
      bar.update(1)
      bar.set_postfix(pm=f"{metrics['env/pm_score']:.2f}", kl=f"{kl_mean:.2f}")
      done_it = it + 1
      if done_it % probe_every == 0 or done_it == num_iterations:
        run_probe(done_it, state.params, writer)
      if done_it % ckpt_every == 0 or done_it == num_iterations:
        ckpt.save(int(jax.device_get(state.step)), state,
                  metadata={"iteration": done_it, "beta": metrics["kl/beta"],
                            "model_config": cfg.to_dict()}, force=True)
      if exit_after and done_it >= exit_after:
        ckpt.wait()
        os._exit(17)  # pylint: disable=protected-access  # fault injection (tests)
  bar.close()
  ckpt.close()
  save_model(out_dir, state.params["policy"], cfg, kind="lm", info={
      "tokenizer_path": os.path.abspath(tok.path), "program": "ppo",
      "init_from": os.path.abspath(policy_from), "reward_model": os.path.abspath(reward_model),
      "num_iterations": num_iterations})
  common.mark_done(workdir, f"iteration {num_iterations}\n")
  return out_dir
