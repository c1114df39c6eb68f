"""Preference-model training: a scalar reward head on pairs, soft-label Bradley-Terry loss.

The reward of a response is the scalar head's value at its last real token (the
end-of-turn token of the final Assistant turn; ``models.scores.pair_rewards``). Batches
keep the pair axis: ``tokens``/``loss_mask`` [B, 2, L] (index 0 = chosen) and
``p_chosen`` [B], the soft label that enters the loss as its target. A pair longer than
``seq_len`` loses the start of its prompt, never its response (logged as
``data/truncated``). Resumable: killing the run and starting the same command again ends
with the same parameters as an uninterrupted run.

  python -m cai_jax.main --gin_file=runs/preference_model.gin --workdir=/tmp/pm \\
      --gin_param="preference_model.train_data='pairs.jsonl'" \\
      --gin_param="preference_model.init_model='/tmp/sft/model'"
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cai_jax import models
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.builders import open_preference_pairs
from cai_jax.data.loaders import preference_loader
from cai_jax.losses import preference_loss, preference_metrics
from cai_jax.models.scores import pair_rewards
from cai_jax.models.store import SavedModel
from cai_jax.sharding import batch_putter, build_mesh
from cai_jax.train import state as state_lib
from cai_jax.train import trainer
from cai_jax.train.optim import make_optimizer
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC

_log = logging.getLogger(__name__)


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
    dev = put_batch({k: batch[k] for k in ("tokens", "loss_mask")})
    rewards.append(np.asarray(jax.device_get(reward_fn(dev))))
    targets.append(np.asarray(batch["p_chosen"]))
  if not rewards:
    raise ValueError("the eval set holds fewer pairs than one batch")
  r, t = jnp.asarray(np.concatenate(rewards)), jnp.asarray(np.concatenate(targets))
  out = {"eval/loss": float(preference_loss(r, t)), "eval/pairs": float(len(t))}
  for k, v in preference_metrics(r, t).items():
    out["eval/" + k] = float(v)
  return out


@gin.configurable
@program("preference_model",
         inputs=("train_data", "init_model", "eval_data", "tokenizer_path"),
         cosmetic=COSMETIC, marks_done=True)
def preference_model(workdir: str, *, train_data: str = gin.REQUIRED,
                     init_model: str = gin.REQUIRED, eval_data: str | None = None,
                     eval_split: str = "train", tokenizer_path: str | None = None,
                     seq_len: int = 256, batch_size: int = 32, num_steps: int = 1000,
                     seed: int = 0, eval_every: int = 0, optimizer: Callable = make_optimizer,
                     mesh_shape: Sequence[int] = (-1, 1, 1), ckpt_every: int = 200,
                     log_every: int = 10, keep_checkpoints: int = 2) -> str:
  """Trains a preference model on labelled pairs; returns the saved model folder.

  Args:
    workdir: output folder: ``checkpoints/``, metrics, built data, the final ``model/``.
    train_data: chosen/rejected JSONL or a pair record set folder ``DATA_DIR/NAME``
      (its "train" split), e.g. the labeling program's ``pref_data``.
    init_model: a saved LM (its backbone is copied, the head starts at zero) or a saved
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
  if workdir_lib.skip_if_done(workdir, "preference_model"):
    return trainer.model_dir(workdir)

  # --- Init model, tokenizer, mesh, data ------------------------------------------------
  saved = SavedModel.open(init_model, role="preference_model.init_model")
  tok = saved.tokenizer(tokenizer_path)
  mesh = build_mesh(mesh_shape)
  train_src = open_preference_pairs(train_data, paths.join(workdir, "data", "train"))
  batches = iter(preference_loader(train_src, tok, seq_len=seq_len, batch_size=batch_size,
                                   seed=seed))
  evaluate = None
  if eval_data is not None:
    eval_src = open_preference_pairs(eval_data, paths.join(workdir, "data", "eval"),
                                     eval_split)
    graphdef = models.abstract(saved.config, "scalar")[0]
    reward_fn = jax.jit(lambda p, b: pair_rewards(graphdef, p, b["tokens"], b["loss_mask"]))
    put = batch_putter(mesh, batch_size)
    evaluate = lambda params: evaluate_pairs(  # noqa: E731
        lambda b: reward_fn(params, b),
        preference_loader(eval_src, tok, seq_len=seq_len, batch_size=batch_size,
                          shuffle=False, num_epochs=1), put)
  _log.info("preference_model: %d train pairs, %s eval pairs", len(train_src),
            len(eval_src) if eval_data is not None else "no")

  # --- Train ------------------------------------------------------------------------
  return trainer.fit(
      workdir, program="preference_model", mesh=mesh,
      init=trainer.ModelInit.saved(saved, "scalar"), loss=pm_loss_fn, batches=batches,
      schedule=trainer.Schedule(num_steps, batch_size, seed, ckpt_every, log_every,
                                keep_checkpoints), optimizer=optimizer,
      info={"tokenizer_path": tok.path, "train_data": paths.absolute(train_data)},
      evaluate=evaluate, eval_every=eval_every)
