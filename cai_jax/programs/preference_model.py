"""Preference-model training: a scalar reward head on pairs, soft-label Bradley-Terry loss.

The reward of a response is the scalar head's value at its last real token (the
end-of-turn token of the final Assistant turn). Batches keep the pair axis:
``tokens``/``loss_mask`` [B, 2, L] (index 0 = chosen) and ``p_chosen`` [B], the soft
label that enters the loss as its target. Resumable: killing the run and starting the
same command again ends with the same parameters as an uninterrupted run.

  python -m cai_jax.main --gin_file=runs/preference_model.gin --workdir=/tmp/pm \
      --gin_param="preference_model.train_data='pairs.jsonl'" \
      --gin_param="preference_model.init_from='/tmp/sft/model'"
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cai_jax import models
from cai_jax.data.loaders import preference_loader
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.losses import preference_loss, preference_metrics
from cai_jax.models.store import load_model, read_model_info, save_model
from cai_jax.programs import common
from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.loop import train_loop
from cai_jax.train.metrics import MetricsWriter
from cai_jax.train.optim import make_optimizer

_log = logging.getLogger(__name__)


def pair_rewards(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array,
                 loss_mask: jax.Array) -> jax.Array:
  """Rewards [B, 2] of both responses of each pair.

  Args:
    graphdef: a scalar-head model's graph.
    params: its parameters.
    tokens: [B, 2, L] int32 pairs (prompt + response, right-padded).
    loss_mask: [B, 2, L], 1 on each response's tokens; the reward is read at the last 1.
  """
  values = models.merge(graphdef, params)(common.flatten_pairs(tokens))  # [2B, L]
  last = models.last_token_values(values, common.flatten_pairs(loss_mask) > 0)
  return common.unflatten_pairs(last)


def pm_loss_fn(graphdef: nnx.GraphDef) -> state_lib.LossFn:
  """Soft-label Bradley-Terry loss on a pair batch, with ``preference_metrics`` as aux."""

  def loss_fn(params, batch, rng):
    del rng
    rewards = pair_rewards(graphdef, params, batch["tokens"], batch["loss_mask"])
    target = batch["p_chosen"]
    return preference_loss(rewards, target), preference_metrics(rewards, target)

  return loss_fn


def evaluate_pairs(reward_fn: Callable[[dict], jax.Array], batches: Any,
                   put_batch: Callable[[dict], dict]) -> dict[str, float]:
  """Loss and ``preference_metrics`` over a whole pair set (ECE over all of it)."""
  rewards, targets = [], []
  for batch in batches:
    rewards.append(np.asarray(jax.device_get(reward_fn(put_batch(batch)))))
    targets.append(np.asarray(batch["p_chosen"]))
  if not rewards:
    raise ValueError("the eval set holds fewer pairs than one batch")
  r, t = jnp.asarray(np.concatenate(rewards)), jnp.asarray(np.concatenate(targets))
  out = {"eval/loss": float(preference_loss(r, t)), "eval/pairs": float(len(t))}
  for k, v in preference_metrics(r, t).items():
    out["eval/" + k] = float(v)
  return out


@gin.configurable
def preference_model(workdir: str, *, train_data: str = gin.REQUIRED,
                     init_from: str = gin.REQUIRED, eval_data: str | None = None,
                     eval_split: str = "train", tokenizer_path: str | None = None,
                     seq_len: int = 256, batch_size: int = 32, num_steps: int = 1000,
                     seed: int = 0, eval_every: int = 0, optimizer: Callable = make_optimizer,
                     mesh_shape: Sequence[int] = (-1, 1, 1), ckpt_every: int = 200,
                     log_every: int = 10, keep_checkpoints: int = 2) -> str:
  """Trains a preference model on labelled pairs; returns the saved model folder.

  Args:
    workdir: output folder: ``checkpoints/``, metrics, built data, the final ``model/``.
    train_data: chosen/rejected JSONL or a pair record set folder ``DATA_DIR/NAME``
      (its "train" split), e.g. the labeling program's output.
    init_from: a saved LM (its backbone is copied, the head starts at zero) or a saved
      scalar model.
    eval_data: pairs to evaluate on (JSONL or record set); None: no eval.
    eval_split: the split of an ``eval_data`` record set.
    tokenizer_path: sentencepiece ``.model``; default: the init model's tokenizer.
    seq_len, batch_size, num_steps, seed: the schedule.
    eval_every: evaluate every this many steps (0: only at the end); eval metrics
      are logged with an ``eval/`` prefix, pairs past the last full batch dropped.
    optimizer: ``optimizer(total_steps=...) -> (optax transform, schedule)``.
    mesh_shape: (data, fsdp, tensor) sizes; one may be -1.
    ckpt_every, log_every, keep_checkpoints: checkpoint and logging cadence.
  """
  out_dir = os.path.join(workdir, "model")
  if common.is_done(workdir):
    _log.info("preference_model: %s is complete, skipping", workdir)
    return out_dir

  # --- Mesh -------------------------------------------------------------------
  mesh = common.build_mesh(tuple(mesh_shape))

  # --- Data -------------------------------------------------------------------
  cfg, init_kind, init_info = read_model_info(init_from)
  tokenizer_path = tokenizer_path or init_info.get("tokenizer_path")
  if not tokenizer_path:
    raise ValueError(f"{init_from} records no tokenizer_path; bind "
                     "preference_model.tokenizer_path")
  tok = Tokenizer.load(tokenizer_path)
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model only {cfg.vocab_size}")
  train_src = common.preference_source(train_data, os.path.join(workdir, "data", "train"))
  batches = iter(preference_loader(train_src, tok, seq_len=seq_len, batch_size=batch_size,
                                   seed=seed))
  put_batch = common.batch_putter(mesh, batch_size)
  eval_src = None
  if eval_data is not None:
    eval_src = common.preference_source(eval_data, os.path.join(workdir, "data", "eval"),
                                        eval_split)
  _log.info("preference_model: %d train pairs, %s eval pairs", len(train_src),
            len(eval_src) if eval_src is not None else "no")

  # --- Model and optimizer ----------------------------------------------------
  graphdef, abstract_params, _ = models.abstract(cfg, "scalar")
  _log.info("preference_model: %s parameters (init from a saved %s model)",
            f"{models.count_params(abstract_params):,}", init_kind)
  tx, schedule = optimizer(total_steps=num_steps)

  # --- Shardings, restore or init ---------------------------------------------
  params_shardings = models.param_shardings(cfg, mesh, "scalar")
  init_params = lambda: load_model(init_from, mesh=mesh, kind="scalar")[2]
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints)
  state, meta, shardings = common.restore_or_init(ckpt, mesh, params_shardings,
                                                  abstract_params, tx, init_params)
  if meta is not None:
    batches.set_state(meta["data_state"])
  step_fn = state_lib.make_train_step(pm_loss_fn(graphdef), tx, state_sharding=shardings)
  reward_fn = jax.jit(lambda p, b: pair_rewards(graphdef, p, b["tokens"], b["loss_mask"]))

  # --- Loop (in stretches between evaluations) ---------------------------------
  stretch = eval_every if (eval_every and eval_src is not None) else num_steps
  with MetricsWriter(workdir) as writer, jax.set_mesh(mesh):
    while int(jax.device_get(state.step)) < num_steps:
      start = int(jax.device_get(state.step))
      stop = min(num_steps, (start // stretch + 1) * stretch)
      state = train_loop(state=state, step_fn=step_fn, batches=batches, num_steps=stop,
                         rng=jax.random.key(seed), put_batch=put_batch, checkpointer=ckpt,
                         writer=writer, schedule=schedule, ckpt_every=ckpt_every,
                         log_every=log_every, data_state=batches.get_state,
                         metadata={"model_config": cfg.to_dict()}, desc="preference_model")
      if eval_src is not None:
        eval_batches = preference_loader(eval_src, tok, seq_len=seq_len,
                                         batch_size=batch_size, shuffle=False, num_epochs=1)
        m = evaluate_pairs(lambda b: reward_fn(state.params, b), eval_batches, put_batch)
        writer.write(stop, m)
        _log.info("preference_model: step %d eval %s", stop,
                  {k: round(v, 4) for k, v in m.items()})
  ckpt.close()

  # --- Save the model ---------------------------------------------------------
  save_model(out_dir, state.params, cfg, kind="scalar", info={
      "tokenizer_path": os.path.abspath(tokenizer_path), "program": "preference_model",
      "init_from": os.path.abspath(init_from), "train_data": os.path.abspath(train_data),
      "num_steps": num_steps})
  common.mark_done(workdir, f"step {num_steps}\n")
  return out_dir
