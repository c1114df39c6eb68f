"""Supervised fine-tuning (and from-scratch pretraining) on conversations.

Loss on the tokens the model writes (Assistant/Critique/Revision bodies and their
end-of-turn token), or on every token with ``loss_on="all"``. In SL-CAI it fine-tunes the
base model on the final revisions (``sl_conversations``); the toy world also pretrains its
base model with it. Resumable: killing the run and starting the same command again
continues from the last checkpoint and ends with the same parameters as an uninterrupted
run.

  python -m cai_jax.main --gin_file=runs/sft.gin --workdir=/tmp/sft \\
      --gin_param="sft.train_data='convs.jsonl'" --gin_param="sft.init_model='/tmp/base/model'"
"""
from __future__ import annotations

import logging
from typing import Callable

import gin
import grain

from cai_jax import models
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.conversations import batch_dataset, pad_examples, read_conversations
from cai_jax.data.dialogue import Turn
from cai_jax.data.loaders import example_turns
from cai_jax.data.packing import next_token_weights, pack_examples
from cai_jax.data.records import read_records
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.losses.lm import masked_lm_loss
from cai_jax.models.store import SavedModel
from cai_jax.sharding import build_mesh
from cai_jax.train import state as state_lib
from cai_jax.train import trainer
from cai_jax.train.optim import make_optimizer
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC

_log = logging.getLogger(__name__)


def lm_loss_fn(graphdef) -> state_lib.LossFn:
  """Next-token loss on the tokens whose ``loss_mask`` is 1.

  The batch holds ``tokens`` and ``loss_mask`` [b, t], and for packed rows also
  ``segment_ids`` and ``positions`` (attention stays inside each example and no
  example predicts the first token of the next).
  """

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch["tokens"]
    kwargs = {}
    weights = batch["loss_mask"][:, 1:]
    if "segment_ids" in batch:
      seg = batch["segment_ids"]
      kwargs = {"segment_ids_bt": seg[:, :-1], "positions_bt": batch["positions"][:, :-1]}
      weights = next_token_weights(batch["loss_mask"], seg)
    logits = models.merge(graphdef, params)(tokens[:, :-1], **kwargs)
    loss, n = masked_lm_loss(logits, tokens[:, 1:], weights)
    return loss, {"target_tokens": n}

  return loss_fn


def load_conversations(path: str) -> list[list[Turn]]:
  """Conversations from a JSONL file or from a record set folder (``DATA_DIR/NAME``)."""
  if path.endswith(".jsonl"):
    return read_conversations(path)
  data_dir, name = paths.split(path)
  source = read_records(data_dir, name, split="train")
  convs = [example_turns(source[i]) for i in range(len(source))]
  if not convs:
    raise ValueError(f"record set {path} has no conversations")
  return convs


def conversation_batches(convs: list[list[Turn]], tok: Tokenizer, *, seq_len: int,
                         batch_size: int, seed: int, loss_on: str, pack: bool
                         ) -> grain.IterDataset:
  """Tokenized conversations, packed (first fit) or padded to ``seq_len``, as an endless
  checkpointable batch stream (a fresh permutation of the rows every epoch)."""
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
  return batch_dataset(arrays, batch_size=batch_size, seed=seed)


@gin.configurable
@program("sft",
         inputs=("train_data", "tokenizer_path", "init_model"),
         cosmetic=COSMETIC, marks_done=True)
def sft(workdir: str, *, train_data: str = gin.REQUIRED, tokenizer_path: str | None = None,
        model_config: models.ModelConfig | None = None, init_model: str | None = None,
        seq_len: int = 256, batch_size: int = 32, num_steps: int = 1000, seed: int = 0,
        loss_on: str = "model", pack: bool = True, optimizer: Callable = make_optimizer,
        mesh_shape: tuple[int, int, int] = (-1, 1, 1), ckpt_every: int = 200,
        log_every: int = 10, keep_checkpoints: int = 2,
        hf_export: bool = False) -> str:
  """Trains an LM on a conversations file; returns the saved model folder.

  Args:
    workdir: output folder: ``checkpoints/``, metrics, and the final ``model/``.
    train_data: conversations JSONL (see ``cai_jax.data.conversations``), or a record
      set folder ``DATA_DIR/NAME`` written by ``cai_jax.data.builders.write_records``
      with dialogue features (its "train" split is used).
    tokenizer_path: sentencepiece ``.model``; default: the init model's tokenizer
      (required when training from scratch).
    model_config: architecture when training from scratch.
    init_model: a saved model folder to fine-tune (takes precedence over
      ``model_config``).
    seq_len, batch_size, num_steps, seed: the schedule.
    loss_on: "model" (model-written turns only) or "all" tokens.
    pack: pack several conversations per row (segment-masked attention) instead
      of padding each to ``seq_len``.
    optimizer: ``optimizer(total_steps=...) -> (optax transform, schedule)``.
    mesh_shape: (data, fsdp, tensor) sizes; one may be -1.
    ckpt_every, log_every, keep_checkpoints: checkpoint and logging cadence.
    hf_export: also write the trained model as a Hugging Face folder ``{workdir}/hf``.
  """
  if workdir_lib.skip_if_done(workdir, "sft"):
    return trainer.model_dir(workdir)
  if loss_on not in ("model", "all"):
    raise ValueError(f"loss_on must be 'model' or 'all', got {loss_on!r}")

  # --- Model to start from, its tokenizer ----------------------------------------------
  if init_model is not None:
    saved = SavedModel.open(init_model, role="sft.init_model")
    init, tok = trainer.ModelInit.saved(saved, "lm"), saved.tokenizer(tokenizer_path)
  elif model_config is not None:
    if tokenizer_path is None:
      raise ValueError("sft from scratch (model_config) needs a tokenizer_path")
    init, tok = trainer.ModelInit.scratch(model_config, "lm", seed), Tokenizer.load(
        tokenizer_path)
    if tok.vocab_size > model_config.vocab_size:
      raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model only "
                       f"{model_config.vocab_size}; raise ModelConfig.vocab_size")
  else:
    raise ValueError("sft needs init_model (a saved model) or model_config")

  # --- Mesh, data, train --------------------------------------------------------------
  mesh = build_mesh(mesh_shape)
  batches = iter(conversation_batches(load_conversations(train_data), tok, seq_len=seq_len,
                                      batch_size=batch_size, seed=seed, loss_on=loss_on,
                                      pack=pack))
  return trainer.fit(
      workdir, program="sft", mesh=mesh, init=init, loss=lm_loss_fn, batches=batches,
      schedule=trainer.Schedule(num_steps, batch_size, seed, ckpt_every, log_every,
                                keep_checkpoints), optimizer=optimizer,
      info={"tokenizer_path": tok.path, "train_data": paths.absolute(train_data)},
      hf_export=hf_export)
