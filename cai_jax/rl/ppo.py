"""PPO against a preference model with a KL penalty (Bai et al. 2022, Sec. 4; Ziegler et
al. 2019; Stiennon et al. 2020), as an algorithm module: the program only wires it.

One iteration is ``learner.rollout`` then ``learner.learn``:

1. **Rollout.** ``rollout_batch`` prompts (a pure function of ``(seed, iteration)``:
   ``iteration_prompts``) are answered by the current policy with the fast sampler.
2. **Score.** One jitted pass (``score_rollout``) gives the policy's and the frozen
   reference's log-probs of the sampled tokens, the value model's estimates, and the
   preference model's score of each answer (read at its last token, in the encoding it
   was trained on: ``rl.reward.RewardModel.arrays``).
3. **Advantages.** Per-token rewards ``-beta * KL_t`` plus the score at the last token
   (``losses.kl_penalized_rewards``), GAE, optional whitening (``advantages``).
4. **Learn.** ``ppo_epochs`` passes over shuffled minibatches with the clipped policy and
   value losses (``ppo_loss_fn``: one loss, ``pg + vf_coef * vl``, so policy and value
   take one optimizer step together). The rollout stays on the devices: all
   ``ppo_epochs x minibatches`` steps run in one jitted scan that gathers each minibatch
   by index (``train.state.make_train_epochs``), and the host reads the metrics once.

The pieces are pure functions of arrays; ``PPOLearner`` holds the jitted versions and the
frozen parameters. The KL coefficient's controller state is part of the checkpointed
state (``PPOState``).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cai_jax import models
from cai_jax.data.dialogue import Turn
from cai_jax.losses import kl as kl_lib
from cai_jax.losses import ppo as ppo_lib
from cai_jax.losses.lm import token_logprobs
from cai_jax.models.scores import response_scores
from cai_jax.rl.reward import RewardModel
from cai_jax.sampling import Sampler, buckets, call_seed
from cai_jax.sharding import batch_putter, check_batch_divides
from cai_jax.train import state as state_lib
from cai_jax.sharding.processes import fetch

DEFAULT_REFUSAL_MARKERS = ("i can't", "i cannot", "i can not", "i won't", "sorry")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """PPO's hyperparameters (see the ``ppo`` program for each one's meaning)."""

  rollout_batch: int = 64
  minibatch_size: int = 16
  ppo_epochs: int = 2
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_p: float = 1.0
  kl_estimator: str = "k1"
  gamma: float = 1.0
  lam: float = 0.95
  clip_eps: float = 0.2
  value_clip: float = 0.2
  vf_coef: float = 0.5
  whiten_advantages: bool = True
  truncated_score: float | None = None
  refusal_markers: Sequence[str] = DEFAULT_REFUSAL_MARKERS
  seed: int = 0
  grad_accum_steps: int = 1   # micro-batches per minibatch step (token-weighted)

  def __post_init__(self):
    if self.rollout_batch % self.minibatch_size:
      raise ValueError(f"rollout_batch={self.rollout_batch} is not a multiple of "
                       f"minibatch_size={self.minibatch_size}")
    if self.grad_accum_steps < 1 or self.minibatch_size % self.grad_accum_steps:
      raise ValueError(f"grad_accum_steps={self.grad_accum_steps} must be >= 1 and divide "
                       f"minibatch_size={self.minibatch_size}")
    if self.kl_estimator not in kl_lib.KL_ESTIMATORS:
      raise ValueError(f"kl_estimator must be one of {kl_lib.KL_ESTIMATORS}, got "
                       f"{self.kl_estimator!r}")

  @property
  def minibatches(self) -> int:
    return self.rollout_batch // self.minibatch_size

  @property
  def steps_per_iteration(self) -> int:
    return self.ppo_epochs * self.minibatches


@flax.struct.dataclass
class PPOState:
  """What PPO checkpoints: policy + value parameters with their optimizer state, and the
  KL controller's state (beta)."""

  train: state_lib.TrainState
  kl: kl_lib.KLControllerState


def kl_controller(kl_coef: float, kl_target: float | None, kl_horizon: float):
  """A fixed beta, or the adaptive controller of Ziegler et al. 2019 (``kl_target``)."""
  if kl_target is None:
    return kl_lib.FixedKLController(kl_coef)
  return kl_lib.AdaptiveKLController(init_beta=kl_coef, target=kl_target, horizon=kl_horizon)


def is_refusal(text: str, markers: Sequence[str]) -> bool:
  """True if the answer contains a refusal marker (case-insensitive substring)."""
  low = text.lower()
  return any(m in low for m in markers)


def iteration_prompts(n: int, batch: int, seed: int, iteration: int) -> list[int]:
  """Prompt indices of an iteration: consecutive slices of per-epoch permutations."""
  out, pos = [], iteration * batch
  while len(out) < batch:
    epoch, offset = divmod(pos, n)
    take = min(batch - len(out), n - offset)
    order = np.random.default_rng(call_seed(seed, "prompts", epoch)).permutation(n)
    out += order[offset:offset + take].tolist()
    pos += take
  return out


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


# --- Pure functions --------------------------------------------------------------------


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
  score = response_scores(graphdefs["reward"], rm_params, batch["pm_tokens"],
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


def ppo_token_weight(batch: dict, aux: dict) -> jax.Array:
  """A micro-batch's weight in gradient accumulation: its number of valid tokens (the
  policy and value losses are means over them)."""
  del aux
  return jnp.sum(batch["mask"] > 0, dtype=jnp.float32)


# --- The learner -------------------------------------------------------------------------


@dataclasses.dataclass
class Rollout:
  """One iteration's rollout: the learning tensors (on the devices, rows sharded over the
  batch axes) and what is logged (on the host)."""

  data: dict[str, jax.Array]   # tokens, mask, logp, values, advantages, returns
  metrics: dict[str, float]
  kl_mean: float
  answers: list[str]


class PPOLearner:
  """The jitted PPO pieces for one policy / value / reward / reference set.

  Args:
    cfg: hyperparameters.
    mesh: the device mesh (rollouts and minibatches are sharded over data x fsdp).
    graphdefs: {"policy", "value", "reward"}.
    ref_params: the frozen reference (the SL-CAI model; the policy's graph).
    reward: the preference model (its ``arrays`` encode answers for the scoring pass).
    optimizer: the optax transformation of the train state.
    state_shardings: the ``TrainState`` shardings (for the jitted learning scan).
  """

  def __init__(self, cfg: PPOConfig, *, mesh: Mesh, graphdefs: dict[str, nnx.GraphDef],
               ref_params: Any, reward: RewardModel, optimizer: Any,
               state_shardings: state_lib.TrainState):
    self.cfg, self.mesh, self.graphdefs = cfg, mesh, graphdefs
    self.ref_params, self.reward, self.tok = ref_params, reward, reward.tokenizer
    check_batch_divides(mesh, cfg.minibatch_size)   # minibatches are gathered on device
    self._put_rollout = batch_putter(mesh, cfg.rollout_batch)
    self._score = jax.jit(functools.partial(score_rollout, graphdefs))
    self._adv = jax.jit(functools.partial(advantages, estimator=cfg.kl_estimator,
                                          gamma=cfg.gamma, lam=cfg.lam,
                                          whiten=cfg.whiten_advantages))
    self._epochs = state_lib.make_train_epochs(
        ppo_loss_fn(graphdefs, clip_eps=cfg.clip_eps, value_clip=cfg.value_clip,
                    vf_coef=cfg.vf_coef), optimizer, state_sharding=state_shardings,
        grad_accum_steps=cfg.grad_accum_steps, accum_weight=ppo_token_weight)

  def sampler(self, params: dict[str, Any]) -> Sampler:
    """The current policy as a sampler."""
    return Sampler(self.graphdefs["policy"], params["policy"], mesh=self.mesh)

  def replicated(self, x: Any) -> Any:
    """``x`` as global arrays replicated on the mesh (checkpointable)."""
    return jax.device_put(x, NamedSharding(self.mesh, P()))

  def rollout(self, params: dict[str, Any], prompt_ids: Sequence[Sequence[int]],
              requests: Sequence[Sequence[Turn]], iteration: int, beta: jax.Array,
              length: int) -> Rollout:
    """Samples, scores and computes advantages for one iteration's prompts; ``length``
    bounds the rows (the rollout uses the shortest ``buckets.train_bucket`` that fits)."""
    cfg, tok = self.cfg, self.tok
    t0 = time.perf_counter()
    out = self.sampler(params).generate(
        prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=cfg.top_p, stop_tokens=tok.stop_ids, seed=call_seed(cfg.seed, "rollout",
                                                                   iteration))
    t_gen = time.perf_counter() - t0
    answers = [tok.decode_generated(t) for t in out.tokens]
    truncated = np.array([not set(tok.stop_ids) & set(t) for t in out.tokens])
    kept = [p[d:] for p, d in zip(prompt_ids, out.dropped)]   # over-long prompts are cut
    # Rows as long as this rollout needs (``length`` is the bound): right padding is exact
    # under causal attention, and every padded column costs in scoring and in each step.
    need = max(len(p) + len(t) for p, t in zip(kept, out.tokens))
    batch = rollout_arrays(kept, out.tokens, buckets.train_bucket(need, length),
                           cfg.rollout_batch, tok.pad_id)
    batch.update(self.reward.arrays(requests, answers, cfg.rollout_batch))
    dev = self._put_rollout(batch)
    scored = self._score(params, self.ref_params, self.reward.params, dev)
    score = scored["score"]
    if cfg.truncated_score is not None:
      score = jnp.where(self._put_rollout({"t": truncated})["t"], cfg.truncated_score, score)
    adv = self._adv(score, scored["logp"], scored["ref_logp"], scored["values"], dev["mask"],
                    beta=beta)
    host = fetch({"score": score, "kl": adv["kl_seq"], "reward": adv["reward_seq"]})
    if not all(np.all(np.isfinite(v)) for v in host.values()):
      raise FloatingPointError(f"ppo: non-finite rollout scores at iteration {iteration}; "
                               "the last good checkpoint is kept")
    # The learning tensors stay on the devices; ``learn`` gathers minibatches there.
    data = {"tokens": dev["tokens"], "mask": dev["mask"], "logp": scored["logp"],
            "values": scored["values"], "advantages": adv["advantages"],
            "returns": adv["returns"]}
    kl_mean = float(np.mean(host["kl"]))
    metrics = {
        "env/pm_score": float(np.mean(host["score"])), "env/kl": kl_mean,
        "env/reward": float(np.mean(host["reward"])),
        "env/response_length": float(np.mean([len(t) for t in out.tokens])),
        "env/truncated_rate": float(np.mean(truncated)),
        "env/refusal_rate": float(np.mean([is_refusal(a, cfg.refusal_markers)
                                           for a in answers])),
        "time/generation_s": t_gen, "time/score_s": time.perf_counter() - t0 - t_gen}
    return Rollout(data, metrics, kl_mean, answers)

  def minibatch_index(self, iteration: int) -> np.ndarray:
    """[steps_per_iteration, minibatch_size] int32: the rollout rows of each step, epoch
    by epoch; epoch ``e`` is a permutation drawn from ``(seed, "minibatch", iteration,
    e)``, cut into ``minibatches`` consecutive slices."""
    cfg = self.cfg
    perms = [np.random.default_rng(call_seed(cfg.seed, "minibatch", iteration, epoch)
                                   ).permutation(cfg.rollout_batch)
             for epoch in range(cfg.ppo_epochs)]
    return np.stack(perms).reshape(cfg.steps_per_iteration, cfg.minibatch_size
                                   ).astype(np.int32)

  def train_steps(self, state: state_lib.TrainState, rollout: Rollout, iteration: int
                  ) -> tuple[state_lib.TrainState, dict[str, np.ndarray]]:
    """All of an iteration's minibatch steps in one jitted scan (``state`` is donated);
    returns the state and the per-step metrics [steps_per_iteration] on the host (one
    read). ``metrics["finite"]`` is False from the first non-finite step on, and no step
    from there on was applied."""
    index = self.replicated(self.minibatch_index(iteration))
    with jax.set_mesh(self.mesh):
      state, metrics = self._epochs(state, rollout.data, index, jax.random.key(self.cfg.seed))
    return state, {k: np.asarray(v) for k, v in fetch(metrics).items()}

  def learn(self, state: state_lib.TrainState, rollout: Rollout, iteration: int
            ) -> tuple[state_lib.TrainState, dict[str, float]]:
    """``ppo_epochs`` passes of minibatch steps; returns the state and mean metrics.

    Raises:
      FloatingPointError: a step's loss or gradients were not finite (it names the
        first such step; neither it nor any later step was applied).
    """
    cfg = self.cfg
    state, metrics = self.train_steps(state, rollout, iteration)
    finite = metrics.pop("finite")
    if not finite.all():
      epoch, j = divmod(int(np.argmin(finite)), cfg.minibatches)
      raise FloatingPointError(f"ppo: non-finite loss or gradients at iteration "
                               f"{iteration} (epoch {epoch}, minibatch {j}); the update "
                               "was not applied and the last good checkpoint is kept")
    return state, {k: float(np.mean([float(x) for x in v])) for k, v in metrics.items()}


def prompt_length_bucket(prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> int:
  """The longest rollout row: the longest prompt plus the answer budget, bucketed."""
  return buckets.length_bucket(max(len(p) for p in prompt_ids) + max_new_tokens)
