"""grain loaders over record sets: shard by process, shuffle per epoch, tokenize, pad or pack.

A loader is a ``grain.IterDataset``; ``it = iter(loader)`` yields dicts of numpy batches
and ``it.get_state()`` / ``it.set_state(state)`` resume at the exact position (store the
state next to the model checkpoint). The stages:

  ``examples``: a ``grain.MapDataset`` over any random-access source (``read_records``,
    ``tfds.data_source``, a list), all of it on every process (or a shard of it, see
    ``process_shard_options``), a fresh seeded permutation every epoch;
  ``EncodeDialogue``: an example -> ``ids`` + ``loss_mask`` (1 on the body and end-of-turn
    tokens of assistant/critique/revision turns);
  ``token_batches``: fixed-length rows (padding, or packing with ``segment_ids`` and
    ``positions``), batched with ``drop_remainder``.

Dialogue batches hold [b, seq_len] int32 ``tokens``, ``loss_mask``, ``segment_ids``,
``positions`` and [b] ``num_truncated`` (examples cut to fit; never dropped). Weight
next-token targets with ``packing.next_token_weights``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np

from cai_jax.data import packing
from cai_jax.data.dialogue import ASSISTANT, Turn, parse_hh
from cai_jax.data.records import to_text
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.sampling import buckets

DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def process_shard_options(drop_remainder: bool = True) -> grain.sharding.ShardOptions:
  """This process's shard: index ``jax.process_index()`` of ``jax.process_count()``."""
  return grain.sharding.ShardOptions(shard_index=jax.process_index(),
                                     shard_count=jax.process_count(),
                                     drop_remainder=drop_remainder)


def examples(source: Sequence[Any], *, seed: int = 0, shuffle: bool = True,
             num_epochs: int | None = None,
             shard_options: grain.sharding.ShardOptions | None = None) -> grain.MapDataset:
  """This process's shard of ``source``, shuffled afresh each epoch, repeated.

  Args:
    source: random-access examples (``len`` and ``[i]``).
    seed: shuffle seed; epoch ``e`` uses a permutation derived from (seed, e).
    shuffle: if False, keep the source order.
    num_epochs: passes over the shard; None repeats forever.
    shard_options: which shard to read; default: all of it (every process reads the
      global batches; see ``sharding.batch_putter``). ``process_shard_options()``: with
      ``drop_remainder`` every shard has ``len(source) // shard_count`` examples (the
      last ``len % shard_count`` are not read by anyone), so all processes step alike.

  Raises:
    ValueError: if the shard is empty.
  """
  # Default: every process reads the same global stream (batch_putter places each
  # process's rows), so a multi-process job sees the batches of a one-process run.
  opts = shard_options if shard_options is not None else grain.sharding.NoSharding()
  ds = grain.MapDataset.source(source)
  if opts.drop_remainder:
    ds = ds[:len(ds) - len(ds) % opts.shard_count]
  ds = ds[opts.shard_index::opts.shard_count]
  if not len(ds):
    raise ValueError(f"shard {opts.shard_index} of {opts.shard_count} of a source with "
                     f"{len(source)} examples is empty")
  if shuffle:
    ds = ds.seed(seed).shuffle()  # before repeat: a new permutation every epoch
  return ds.repeat(num_epochs)


def example_turns(example: Mapping[str, Any]) -> list[Turn]:
  """The conversation of a record: ``roles``/``texts`` lists, or public-format ``text``
  or ``prompt``.

  Raises:
    ValueError: if the record has none of these fields.
  """
  if "roles" in example and "texts" in example:
    return [Turn(to_text(r), to_text(t)) for r, t in zip(example["roles"], example["texts"])]
  for key in ("text", "prompt"):
    if key in example:
      return parse_hh(to_text(example[key]))
  raise ValueError(f"record has no conversation ('roles'+'texts', 'text' or 'prompt'); "
                   f"fields: {sorted(example)}")


@dataclasses.dataclass(frozen=True)
class EncodeDialogue:
  """Record -> ``{"ids", "loss_mask"}`` int32 arrays (``loss_on="all"``: mask all 1)."""

  tokenizer: Tokenizer
  loss_on: str = "model"

  def __call__(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    enc = self.tokenizer.encode_dialogue(example_turns(example))
    mask = enc.loss_mask if self.loss_on == "model" else [1] * len(enc.ids)
    return {"ids": np.asarray(enc.ids, np.int32), "loss_mask": np.asarray(mask, np.int32)}


@dataclasses.dataclass(frozen=True)
class _Pad:
  seq_len: int
  pad_id: int

  def __call__(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return packing.pad_example(element["ids"], element["loss_mask"], self.seq_len, self.pad_id)


def token_batches(ds: grain.MapDataset, *, seq_len: int, batch_size: int, pad_id: int,
                  pack: bool = False, num_open_rows: int = 4,
                  read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """``{"ids", "loss_mask"}`` elements -> batches of fixed-length rows.

  Args:
    ds: elements with 1-D ``ids`` and ``loss_mask``.
    seq_len: row length; longer examples are truncated and counted in ``num_truncated``.
    batch_size: rows per batch; a last partial batch is dropped.
    pad_id: id written on padding.
    pack: pack several examples per row (``packing.PackIterDataset``) instead of one.
    num_open_rows: rows the packer keeps open.
    read_options: grain read threads / prefetch.
  """
  read_options = read_options or DEFAULT_READ_OPTIONS
  if pack:
    rows = packing.PackIterDataset(ds.to_iter_dataset(read_options), seq_len=seq_len,
                                   pad_id=pad_id, num_open_rows=num_open_rows)
    return rows.batch(batch_size, drop_remainder=True)
  ds = ds.map(_Pad(seq_len, pad_id)).batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(read_options)


def dialogue_loader(source: Sequence[Any], tokenizer: Tokenizer, *, seq_len: int,
                    batch_size: int, seed: int = 0, shuffle: bool = True,
                    num_epochs: int | None = None, pack: bool = False, num_open_rows: int = 4,
                    loss_on: str = "model",
                    shard_options: grain.sharding.ShardOptions | None = None,
                    read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Batches of tokenized conversations (see the module docstring and ``examples``).

  Args:
    source: records with ``roles``/``texts``, ``text`` or ``prompt`` (public format).
    tokenizer: gives ids, the loss mask and ``pad_id``.
    loss_on: "model" (assistant/critique/revision tokens) or "all".
    Others: as ``examples`` and ``token_batches``.
  """
  if loss_on not in ("model", "all"):
    raise ValueError(f"loss_on must be 'model' or 'all', got {loss_on!r}")
  ds = examples(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                shard_options=shard_options).map(EncodeDialogue(tokenizer, loss_on))
  return token_batches(ds, seq_len=seq_len, batch_size=batch_size, pad_id=tokenizer.pad_id,
                       pack=pack, num_open_rows=num_open_rows, read_options=read_options)


def encode_response(tokenizer: Tokenizer, prompt: Sequence[Turn], response: str
                    ) -> tuple[list[int], list[int]]:
  """``prompt`` + an Assistant turn ``response`` -> (ids, mask with 1 only on the response
  turn's body and end-of-turn token): how a preference model sees a response, and how
  DPO sums its log-probs. Cut a long one with ``packing.keep_end`` (the prompt goes
  first, from the left; the end-of-turn token, where the score is read, stays)."""
  n_prompt = len(tokenizer.encode_dialogue(list(prompt)).ids)
  enc = tokenizer.encode_dialogue(list(prompt) + [Turn(ASSISTANT, response)])
  return enc.ids, [0] * n_prompt + list(enc.loss_mask[n_prompt:])


@dataclasses.dataclass(frozen=True)
class EncodePair:
  """Preference record -> ``tokens``/``loss_mask`` [2, seq_len] (chosen, rejected), the
  mask on the final response only, ``p_chosen`` and ``num_truncated`` (0..2: responses
  longer than ``seq_len``, whose prompt was cut from the left so that the response and
  its end-of-turn token stay; see ``packing.keep_end``)."""

  tokenizer: Tokenizer
  seq_len: int

  def __call__(self, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
    prompt = parse_hh(to_text(example["prompt"]))
    rows = []
    for key in ("chosen", "rejected"):
      ids, mask = encode_response(self.tokenizer, prompt, to_text(example[key]))
      rows.append(packing.pad_example(ids, mask, self.seq_len, self.tokenizer.pad_id,
                                      keep="end"))
    return {"tokens": np.stack([r["tokens"] for r in rows]),
            "loss_mask": np.stack([r["loss_mask"] for r in rows]),
            "p_chosen": np.float32(example.get("p_chosen", 1.0)),
            "num_truncated": np.int32(sum(r["num_truncated"] for r in rows))}


@dataclasses.dataclass(frozen=True)
class TrimPairs:
  """Cuts a batch of pairs to ``buckets.train_bucket`` of its longest response end.

  Columns after the last ``loss_mask`` 1 of every row are padding (or tokens that no loss
  reads): under causal attention neither the pair's summed log-probs nor the score read
  at the end-of-turn token depend on them, so the cut changes no number, only the cost.
  """

  seq_len: int

  def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    used = np.flatnonzero(np.any(np.asarray(batch["loss_mask"]) > 0, axis=(0, 1)))
    end = int(used[-1]) + 1 if used.size else 1
    n = buckets.train_bucket(end, self.seq_len)
    return {k: (v[..., :n] if k in ("tokens", "loss_mask") else v) for k, v in batch.items()}


def preference_loader(source: Sequence[Any], tokenizer: Tokenizer, *, seq_len: int,
                      batch_size: int, seed: int = 0, shuffle: bool = True,
                      num_epochs: int | None = None,
                      shard_options: grain.sharding.ShardOptions | None = None,
                      read_options: grain.ReadOptions | None = None,
                      trim: bool = True) -> grain.IterDataset:
  """Batches of preference pairs: ``tokens``/``loss_mask`` [b, 2, L] (index 0 =
  chosen), ``p_chosen`` [b] (probability the first is preferred), ``num_truncated`` [b].

  ``L`` is ``seq_len``, or with ``trim`` the shortest ``buckets.train_bucket`` that holds
  the batch's longest response (``TrimPairs``; same losses, less padding; processes read
  the same batches, so they agree on ``L``).

  Args: as ``dialogue_loader``; records follow ``builders.preference_features``.
  """
  ds = examples(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                shard_options=shard_options).map(EncodePair(tokenizer, seq_len))
  ds = ds.batch(batch_size, drop_remainder=True)
  if trim:
    ds = ds.map(TrimPairs(seq_len))
  return ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS)
