"""Supervised fine-tuning (and from-scratch pretraining) on conversations.

Loss on the tokens the model writes (Assistant/Critique/Revision bodies and their
end-of-turn token), or on every token with ``loss_on="all"``. Resumable: killing
the run and starting the same command again continues from the last checkpoint
and ends with the same parameters as an uninterrupted run.

  python -m cai_jax.main --gin_file=runs/sft.gin --workdir=/tmp/sft \
      --gin_param="sft.train_data='convs.jsonl'" --gin_param="sft.tokenizer_path='tok.model'"
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import gin
import jax

from cai_jax import models
from cai_jax.data.conversations import batch_dataset, pad_examples, read_conversations
from cai_jax.data.dialogue import Turn
from cai_jax.data.loaders import example_turns
from cai_jax.data.packing import pack_examples
from cai_jax.data.records import read_records
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import load_model, read_model_info, save_model
from cai_jax.programs import common
from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.loop import train_loop
from cai_jax.train.metrics import MetricsWriter
from cai_jax.train.optim import make_optimizer

_log = logging.getLogger(__name__)


def load_conversations(path: str) -> list[list[Turn]]:
  """Conversations from a JSONL file or from a record set folder (``DATA_DIR/NAME``)."""
  if path.endswith(".jsonl"):
    return read_conversations(path)
  data_dir, name = os.path.split(os.path.normpath(path))
  source = read_records(data_dir, name, split="train")
  convs = [example_turns(source[i]) for i in range(len(source))]
  if not convs:
    raise ValueError(f"record set {path} has no conversations")
  return convs


@gin.configurable
def sft(workdir: str, *, train_data: str = gin.REQUIRED, tokenizer_path: str = gin.REQUIRED,
        model_config: models.ModelConfig | None = None, init_from: str | None = None,
        seq_len: int = 256, batch_size: int = 32, num_steps: int = 1000, seed: int = 0,
        loss_on: str = "model", pack: bool = True, optimizer: Callable = make_optimizer,
        mesh_shape: tuple[int, int, int] = (-1, 1, 1), ckpt_every: int = 200,
        log_every: int = 10, keep_checkpoints: int = 2) -> str:
  """Trains an LM on a conversations file; returns the saved model folder.

  Args:
    workdir: output folder: ``checkpoints/``, metrics, and the final ``model/``.
    train_data: conversations JSONL (see ``cai_jax.data.conversations``), or a record
      set folder ``DATA_DIR/NAME`` written by ``cai_jax.data.builders.write_records``
      with dialogue features (its "train" split is used).
    tokenizer_path: sentencepiece ``.model`` file.
    model_config: architecture when training from scratch.
    init_from: a saved model folder to fine-tune (takes precedence over
      ``model_config``).
    seq_len, batch_size, num_steps, seed: the schedule.
    loss_on: "model" (model-written turns only) or "all" tokens.
    pack: pack several conversations per row (segment-masked attention) instead
      of padding each to ``seq_len``.
    optimizer: ``optimizer(total_steps=...) -> (optax transform, schedule)``.
    mesh_shape: (data, fsdp, tensor) sizes; one may be -1.
    ckpt_every, log_every, keep_checkpoints: checkpoint and logging cadence.
  """
  out_dir = os.path.join(workdir, "model")
  if common.is_done(workdir):
    _log.info("sft: %s is complete, skipping", workdir)
    return out_dir
  if loss_on not in ("model", "all"):
    raise ValueError(f"loss_on must be 'model' or 'all', got {loss_on!r}")

  # --- Mesh -------------------------------------------------------------------
  mesh = common.build_mesh(mesh_shape)

  # --- Data -------------------------------------------------------------------
  tok = Tokenizer.load(tokenizer_path)
  convs = load_conversations(train_data)
  encoded = [tok.encode_dialogue(c) for c in convs]
  examples = [(e.ids, e.loss_mask if loss_on == "model" else [1] * len(e.ids))
              for e in encoded]
  if pack:
    packed = pack_examples(examples, seq_len, tok.pad_id)
    arrays, truncated = packed.as_dict(), packed.stats.num_truncated
    _log.info("sft: packed %d conversations into %d rows of %d (fill %.2f)",
              len(examples), packed.stats.num_rows, seq_len, packed.stats.fill)
  else:
    padded = pad_examples(examples, seq_len, tok.pad_id)
    arrays = {"tokens": padded.tokens, "loss_mask": padded.loss_mask}
    truncated = padded.num_truncated
  if truncated:
    _log.warning("sft: %d of %d conversations were longer than seq_len=%d and truncated",
                 truncated, len(convs), seq_len)
  data = batch_dataset(arrays, batch_size=batch_size, seed=seed)
  batches = iter(data)
  put_batch = common.batch_putter(mesh, batch_size)

  # --- Model and optimizer ----------------------------------------------------
  if init_from is not None:
    cfg = read_model_info(init_from)[0]
  elif model_config is not None:
    cfg = model_config
  else:
    raise ValueError("sft needs init_from (a saved model) or model_config")
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model only "
                     f"{cfg.vocab_size}; raise ModelConfig.vocab_size")
  graphdef, abstract_params, _ = models.abstract(cfg)
  _log.info("sft: %s parameters", f"{models.count_params(abstract_params):,}")
  tx, schedule = optimizer(total_steps=num_steps)

  # --- Shardings, restore or init ---------------------------------------------
  params_shardings = models.param_shardings(cfg, mesh)

  def init_params():
    if init_from is not None:
      return load_model(init_from, mesh=mesh)[2]
    return models.init(cfg, seed=seed, mesh=mesh)[1]

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints)
  state, meta, shardings = common.restore_or_init(ckpt, mesh, params_shardings,
                                                  abstract_params, tx, init_params)
  if meta is not None:
    batches.set_state(meta["data_state"])
  step_fn = state_lib.make_train_step(common.lm_loss_fn(graphdef), tx,
                                      state_sharding=shardings)

  # --- Loop -------------------------------------------------------------------
  with MetricsWriter(workdir) as writer, jax.set_mesh(mesh):
    state = train_loop(state=state, step_fn=step_fn, batches=batches, num_steps=num_steps,
                       rng=jax.random.key(seed), put_batch=put_batch, checkpointer=ckpt,
                       writer=writer, schedule=schedule, ckpt_every=ckpt_every,
                       log_every=log_every, data_state=batches.get_state,
                       metadata={"model_config": cfg.to_dict()}, desc="sft")
  ckpt.close()

  # --- Save the model ---------------------------------------------------------
  save_model(out_dir, state.params, cfg, info={
      "tokenizer_path": os.path.abspath(tokenizer_path), "program": "sft",
      "init_from": init_from, "train_data": os.path.abspath(train_data),
      "num_steps": num_steps})
  common.mark_done(workdir, f"step {num_steps}\n")
  return out_dir
