"""Direct preference optimisation on labelled pairs against a frozen reference LM.

Policy and reference both start from ``init_from`` (the SL-CAI model); the reference
stays frozen. A response's log-probability is the sum of its tokens' log-probs (the
final Assistant turn, end-of-turn token included). Batches keep the pair axis:
``tokens``/``loss_mask`` [B, 2, L] (index 0 = chosen) and ``p_chosen`` [B], the soft
label that enters ``dpo_loss`` as the per-example target. The reference log-probs
are computed per batch by a separate jitted forward before the step (so the frozen
parameters are an argument, not a constant baked into the step). Resumable.

  python -m cai_jax.main --gin_file=runs/dpo.gin --workdir=/tmp/dpo \
      --gin_param="dpo.train_data='pairs.jsonl'" --gin_param="dpo.init_from='/tmp/sft/model'"
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from cai_jax import models
from cai_jax.data.loaders import preference_loader
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.losses import dpo_loss, dpo_metrics, token_logprobs
from cai_jax.models.store import load_model, read_model_info, save_model
from cai_jax.programs import common
from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.loop import train_loop
from cai_jax.train.metrics import MetricsWriter
from cai_jax.train.optim import make_optimizer

_log = logging.getLogger(__name__)


def pair_logprobs(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array,
                  loss_mask: jax.Array) -> jax.Array:
  """Summed log-probs [B, 2] of each pair's responses under an LM.

  Args:
    graphdef: an LM's graph.
    params: its parameters.
    tokens: [B, 2, L] int32 pairs (prompt + response, right-padded).
    loss_mask: [B, 2, L], 1 on the response tokens whose log-probs are summed.
  """
  tok = common.flatten_pairs(tokens)
  logits = models.merge(graphdef, params)(tok[:, :-1])
  logp = token_logprobs(logits, tok[:, 1:])  # [2B, L-1]
  weights = common.flatten_pairs(loss_mask)[:, 1:].astype(jnp.float32)
  return common.unflatten_pairs(jnp.sum(logp * weights, axis=-1))


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


def reference_putter(put_batch: Callable[[dict], dict], graphdef: nnx.GraphDef,
                     ref_params: Any) -> Callable[[dict], dict]:
  """Wraps ``put_batch`` to add the frozen reference's ``reference_logps`` [B, 2]."""
  ref_fn = jax.jit(lambda p, b: pair_logprobs(graphdef, p, b["tokens"], b["loss_mask"]))

  def put(batch: dict) -> dict:
    out = put_batch(batch)
    out["reference_logps"] = ref_fn(ref_params, out)
    return out

  return put


@gin.configurable
def dpo(workdir: str, *, train_data: str = gin.REQUIRED, init_from: str = gin.REQUIRED,
        beta: float = 0.1, tokenizer_path: str | None = None, seq_len: int = 256,
        batch_size: int = 32, num_steps: int = 1000, seed: int = 0,
        optimizer: Callable = make_optimizer, mesh_shape: Sequence[int] = (-1, 1, 1),
        ckpt_every: int = 200, log_every: int = 10, keep_checkpoints: int = 2) -> str:
  """Trains a policy with DPO on labelled pairs; returns the saved LM folder.

  Args:
    workdir: output folder: ``checkpoints/``, metrics, built data, the final ``model/``.
    train_data: chosen/rejected JSONL or a pair record set folder ``DATA_DIR/NAME``
      (its "train" split), e.g. the labeling program's output.
    init_from: a saved LM (the SL-CAI model): the policy's init and the frozen reference.
    beta: DPO's KL-regularisation strength.
    tokenizer_path: sentencepiece ``.model``; default: the init model's tokenizer.
    seq_len, batch_size, num_steps, seed: the schedule.
    optimizer: ``optimizer(total_steps=...) -> (optax transform, schedule)``.
    mesh_shape: (data, fsdp, tensor) sizes; one may be -1.
    ckpt_every, log_every, keep_checkpoints: checkpoint and logging cadence.
  """
  out_dir = os.path.join(workdir, "model")
  if common.is_done(workdir):
    _log.info("dpo: %s is complete, skipping", workdir)
    return out_dir
  if beta <= 0:
    raise ValueError(f"beta must be > 0, got {beta}")

  # --- Mesh -------------------------------------------------------------------
  mesh = common.build_mesh(tuple(mesh_shape))

  # --- Data -------------------------------------------------------------------
  cfg, kind, init_info = read_model_info(init_from)
  if kind != "lm":
    raise ValueError(f"dpo needs a saved LM as init_from, {init_from} is a {kind!r} model")
  tokenizer_path = tokenizer_path or init_info.get("tokenizer_path")
  if not tokenizer_path:
    raise ValueError(f"{init_from} records no tokenizer_path; bind dpo.tokenizer_path")
  tok = Tokenizer.load(tokenizer_path)
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model only {cfg.vocab_size}")
  train_src = common.preference_source(train_data, os.path.join(workdir, "data", "train"))
  _log.info("dpo: %d train pairs", len(train_src))
  batches = iter(preference_loader(train_src, tok, seq_len=seq_len, batch_size=batch_size,
                                   seed=seed))

  # --- Model and optimizer ----------------------------------------------------
  graphdef, abstract_params, _ = models.abstract(cfg)
  _log.info("dpo: %s parameters", f"{models.count_params(abstract_params):,}")
  tx, schedule = optimizer(total_steps=num_steps)

  # --- Shardings, restore or init ---------------------------------------------
  params_shardings = models.param_shardings(cfg, mesh)
  ref_params = load_model(init_from, mesh=mesh)[2]  # frozen; also the policy's init
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints)
  state, meta, shardings = common.restore_or_init(
      ckpt, mesh, params_shardings, abstract_params, tx,
      lambda: jax.tree.map(jnp.copy, ref_params))
  if meta is not None:
    batches.set_state(meta["data_state"])
  step_fn = state_lib.make_train_step(dpo_loss_fn(graphdef, beta), tx,
                                      state_sharding=shardings)
  put_batch = reference_putter(common.batch_putter(mesh, batch_size), graphdef, ref_params)

  # --- Loop -------------------------------------------------------------------
  with MetricsWriter(workdir) as writer, jax.set_mesh(mesh):
    state = train_loop(state=state, step_fn=step_fn, batches=batches, num_steps=num_steps,
                       rng=jax.random.key(seed), put_batch=put_batch, checkpointer=ckpt,
                       writer=writer, schedule=schedule, ckpt_every=ckpt_every,
                       log_every=log_every, data_state=batches.get_state,
                       metadata={"model_config": cfg.to_dict()}, desc="dpo")
  ckpt.close()

  # --- Save the model ---------------------------------------------------------
  save_model(out_dir, state.params, cfg, info={
      "tokenizer_path": os.path.abspath(tokenizer_path), "program": "dpo",
      "init_from": os.path.abspath(init_from), "reference": os.path.abspath(init_from),
      "train_data": os.path.abspath(train_data), "beta": beta, "num_steps": num_steps})
  common.mark_done(workdir, f"step {num_steps}\n")
  return out_dir
