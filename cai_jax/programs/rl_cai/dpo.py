"""Direct preference optimisation on labelled pairs against a frozen reference LM.

Policy and reference both start from ``policy_model`` (the SL-CAI model); the reference
stays frozen. A response's log-probability is the sum of its tokens' log-probs (the final
Assistant turn, end-of-turn token included; ``models.scores.pair_logprobs``). Batches keep
the pair axis: ``tokens``/``loss_mask`` [B, 2, L] (index 0 = chosen) and ``p_chosen``
[B], the soft label that enters ``dpo_loss`` as the per-example target. The reference
log-probs are computed per batch by a separate jitted forward before the step (so the
frozen parameters are an argument, not a constant baked into the step). A pair longer
than ``seq_len`` loses the start of its prompt, never its response. Resumable.

  python -m cai_jax.main --gin_file=runs/dpo.gin --workdir=/tmp/dpo \\
      --gin_param="dpo.train_data='pairs.jsonl'" --gin_param="dpo.policy_model='/tmp/sft/model'"
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.builders import open_preference_pairs
from cai_jax.data.loaders import preference_loader
from cai_jax.losses import dpo_loss, dpo_metrics
from cai_jax.models.scores import pair_logprobs
from cai_jax.models.store import SavedModel
from cai_jax.sharding import batch_putter, build_mesh
from cai_jax.train import state as state_lib
from cai_jax.train import trainer
from cai_jax.train.optim import make_optimizer
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC

_log = logging.getLogger(__name__)


def dpo_loss_fn(graphdef: nnx.GraphDef, beta: float) -> state_lib.LossFn:
  """DPO loss on a pair batch carrying ``reference_logps`` [B, 2]; aux: ``dpo_metrics``
  and the mean summed log-probs of chosen/rejected under policy and reference."""

  def loss_fn(params, batch, rng):
    del rng
    pi = pair_logprobs(graphdef, params, batch["tokens"], batch["loss_mask"])
    ref = jax.lax.stop_gradient(batch["reference_logps"])
    target = batch["p_chosen"]
    aux = dict(dpo_metrics(pi, ref, beta=beta, target=target))
    first = target >= 0.5  # orient by the majority label, as dpo_metrics does
    for name, lp in (("policy", pi), ("reference", ref)):
      aux[f"logps/{name}_chosen"] = jnp.mean(jnp.where(first, lp[:, 0], lp[:, 1]))
      aux[f"logps/{name}_rejected"] = jnp.mean(jnp.where(first, lp[:, 1], lp[:, 0]))
    return dpo_loss(pi, ref, beta=beta, target=target), aux

  return loss_fn


def pair_logps_fn(graphdef: nnx.GraphDef) -> Callable[[Any, dict], jax.Array]:
  """Jitted ``(params, device batch) -> [B, 2]`` summed response log-probs."""
  return jax.jit(lambda p, b: pair_logprobs(graphdef, p, b["tokens"], b["loss_mask"]))


def reference_logps(graphdef: nnx.GraphDef, ref_params: Any) -> Callable[[dict], dict]:
  """Device batch -> the batch plus the frozen reference's ``reference_logps`` [B, 2]."""
  ref_fn = pair_logps_fn(graphdef)

  def prepare(batch: dict) -> dict:
    return {**batch, "reference_logps": ref_fn(ref_params, batch)}

  return prepare


def evaluate_dpo(graphdef: nnx.GraphDef, ref_params: Any, *, beta: float,
                 batches: Callable[[], Any], put_batch: Callable[[dict], dict]
                 ) -> Callable[[Any], dict[str, float]]:
  """``evaluate(params)``: DPO loss and ``dpo_metrics`` of ``params`` over a whole held-out
  pair set (``batches()`` yields it in a fixed order; the frozen reference's log-probs are
  computed on the first call and reused)."""
  logps = pair_logps_fn(graphdef)
  ref_cache: list[np.ndarray] = []

  def evaluate(params) -> dict[str, float]:
    pis, refs, targets = [], [], []
    for i, batch in enumerate(batches()):
      dev = put_batch({k: batch[k] for k in ("tokens", "loss_mask")})
      if i == len(ref_cache):
        ref_cache.append(np.asarray(jax.device_get(logps(ref_params, dev))))
      pis.append(np.asarray(jax.device_get(logps(params, dev))))
      refs.append(ref_cache[i])
      targets.append(np.asarray(batch["p_chosen"]))
    if not pis:
      raise ValueError("dpo: the eval set holds fewer pairs than one batch")
    pi, ref, t = (jnp.asarray(np.concatenate(x)) for x in (pis, refs, targets))
    out = {"eval/loss": float(dpo_loss(pi, ref, beta=beta, target=t)),
           "eval/pairs": float(len(t))}
    for k, v in dpo_metrics(pi, ref, beta=beta, target=t).items():
      out["eval/" + k] = float(v)
    return out

  return evaluate


@gin.configurable
@program("dpo",
         inputs=("train_data", "policy_model", "tokenizer_path", "eval_data?"),
         cosmetic=COSMETIC, marks_done=True)
def dpo(workdir: str, *, train_data: str = gin.REQUIRED, policy_model: str = gin.REQUIRED,
        beta: float = 0.1, tokenizer_path: str | None = None, seq_len: int = 256,
        batch_size: int = 32, num_steps: int = 1000, seed: int = 0,
        optimizer: Callable = make_optimizer, mesh_shape: Sequence[int] = (-1, 1, 1),
        ckpt_every: int = 200, log_every: int = 10, keep_checkpoints: int = 2,
        eval_data: str | None = None, eval_split: str = "eval", eval_every: int = 0,
        select: str | None = None, hf_export: bool = False) -> str:
  """Trains a policy with DPO on labelled pairs; returns the saved LM folder.

  Args:
    workdir: output folder: ``checkpoints/``, metrics, built data, the final ``model/``.
    train_data: chosen/rejected JSONL or a pair record set folder ``DATA_DIR/NAME``
      (its "train" split), e.g. the labeling program's ``pref_data``.
    policy_model: a saved LM (the SL-CAI model): the policy's init and the frozen
      reference.
    beta: DPO's KL-regularisation strength.
    tokenizer_path: sentencepiece ``.model``; default: the policy's tokenizer.
    seq_len, batch_size, num_steps, seed: the schedule.
    optimizer: ``optimizer(total_steps=...) -> (optax transform, schedule)``.
    mesh_shape: (data, fsdp, tensor) sizes; one may be -1.
    ckpt_every, log_every, keep_checkpoints: checkpoint and logging cadence.
    eval_data: held-out pairs (JSONL or a record set, e.g. the labels' ``eval`` split):
      their DPO loss and implicit-reward metrics are logged with an ``eval/`` prefix every
      ``eval_every`` steps (0: only at the end); None: no evaluation.
    eval_split: the split of an ``eval_data`` record set.
    eval_every: see ``eval_data``.
    select: an eval metric to minimise (``"eval/loss"``): the evaluated parameters where it
      is lowest are saved instead of the last (early stopping on held-out AI labels);
      None: the last.
    hf_export: also write the trained model as a Hugging Face folder ``{workdir}/hf``.
  """
  if workdir_lib.skip_if_done(workdir, "dpo"):
    return trainer.model_dir(workdir)
  if beta <= 0:
    raise ValueError(f"beta must be > 0, got {beta}")
  if select is not None and eval_data is None:
    raise ValueError(f"dpo: select={select!r} needs eval_data (held-out pairs)")

  # --- Policy (and frozen reference), tokenizer, mesh, data ----------------------------
  policy = SavedModel.open(policy_model, role="dpo.policy_model").require_kind(
      "lm", "dpo.policy_model")
  tok = policy.tokenizer(tokenizer_path)
  mesh = build_mesh(mesh_shape)
  train_src = open_preference_pairs(train_data, paths.join(workdir, "data", "train"))
  _log.info("dpo: %d train pairs", len(train_src))
  batches = iter(preference_loader(train_src, tok, seq_len=seq_len, batch_size=batch_size,
                                   seed=seed))
  graphdef, ref_params = policy.load(mesh=mesh)   # frozen; also the policy's init
  # A copy: the train step donates the state's arrays.
  init = trainer.ModelInit(policy.config, "lm", lambda _: jax.tree.map(jnp.copy, ref_params),
                           policy.path)
  evaluate = None
  if eval_data is not None:
    eval_src = open_preference_pairs(eval_data, paths.join(workdir, "data", "eval"),
                                     eval_split)
    _log.info("dpo: %d eval pairs", len(eval_src))
    evaluate = evaluate_dpo(
        graphdef, ref_params, beta=beta, put_batch=batch_putter(mesh, batch_size),
        batches=lambda: preference_loader(eval_src, tok, seq_len=seq_len,
                                          batch_size=batch_size, shuffle=False, num_epochs=1))

  # --- Train ------------------------------------------------------------------------
  return trainer.fit(
      workdir, program="dpo", mesh=mesh, init=init, loss=lambda g: dpo_loss_fn(g, beta),
      batches=batches, schedule=trainer.Schedule(num_steps, batch_size, seed, ckpt_every,
                                                 log_every, keep_checkpoints),
      optimizer=optimizer, prepare=reference_logps(graphdef, ref_params),
      info={"tokenizer_path": tok.path, "reference": policy.path,
            "train_data": paths.absolute(train_data), "beta": beta},
      evaluate=evaluate, eval_every=eval_every, select=select, hf_export=hf_export)
