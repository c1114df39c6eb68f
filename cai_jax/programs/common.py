"""Pieces every training program shares: batch placement, the LM loss step, resume."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from cai_jax import models
from cai_jax.data.packing import next_token_weights
from cai_jax.losses.lm import masked_lm_loss
from cai_jax.sharding import make_mesh, named_sharding
from cai_jax.train import state as state_lib

_log = logging.getLogger(__name__)

DONE_FILE = "DONE"
SPEC_FILE = "spec.json"


def build_mesh(shape: tuple[int, int, int]) -> Mesh:
  mesh = make_mesh(*shape)
  _log.info("mesh %s on %d devices", dict(mesh.shape), mesh.size)
  return mesh


def batch_putter(mesh: Mesh, batch_size: int) -> Callable[[dict], dict]:
  """Returns host-batch -> global device arrays sharded over the batch axes."""
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % n:
    raise ValueError(f"batch_size={batch_size} is not divisible by the data*fsdp mesh size {n}")

  def put(batch: dict) -> dict:
    out = {}
    for k, v in batch.items():
      v = np.asarray(v)
      sh = named_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1))
      out[k] = jax.make_array_from_process_local_data(sh, v)
    return out

  return put


def lm_loss_fn(graphdef: nnx.GraphDef) -> state_lib.LossFn:
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


def restore_or_init(ckpt: Any, mesh: Mesh, params_shardings: Any, abstract_params: Any,
                    optimizer: optax.GradientTransformation,
                    init_params: Callable[[], Any]) -> tuple[state_lib.TrainState, dict | None,
                                                             state_lib.TrainState]:
  """Resume order: this run's own latest checkpoint > ``init_params()`` (an init
  checkpoint or a fresh init). Returns (state, checkpoint metadata or None, shardings).
  """
  shardings = state_lib.state_shardings(mesh, params_shardings, abstract_params, optimizer)
  if ckpt.latest_step() is not None:
    target = state_lib.abstract_state(shardings, abstract_params, optimizer)
    state, meta = ckpt.restore(target)
    _log.info("resumed from step %d", int(jax.device_get(state.step)))
    return state, meta, shardings
  create = jax.jit(lambda p: state_lib.create_state(p, optimizer), out_shardings=shardings)
  return create(init_params()), None, shardings


def mark_done(workdir: str, text: str = "") -> None:
  with open(os.path.join(workdir, DONE_FILE), "w", encoding="utf-8") as f:
    f.write(text)


def is_done(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, DONE_FILE))


def preference_source(path: str, build_dir: str, split: str = "train") -> Any:
  """Preference pairs (``builders.preference_features``) for a program to read.

  Args:
    path: a chosen/rejected JSONL file (built into a record set under ``build_dir``),
      or a record set folder ``DATA_DIR/NAME`` written by ``build_preference_pairs``
      or the labeling program.
    build_dir: where a JSONL file is built (one folder per file: the set's name is
      fixed, so two different files cannot share a folder).
    split: the split to read from a record set (a JSONL file is built as this split).

  Returns:
    A random-access data source of pair records.
  """
  # pylint: disable=import-outside-toplevel
  from cai_jax.data.builders import build_preference_pairs
  from cai_jax.data.records import read_records
  if path.endswith(".jsonl"):
    return build_preference_pairs({split: path}, build_dir)[split]
  data_dir, name = os.path.split(os.path.normpath(path))
  return read_records(data_dir, name, split=split)


def flatten_pairs(x: jax.Array) -> jax.Array:
  """[B, 2, ...] -> [2B, ...] (row 2i is pair i's first response, 2i + 1 its second).

  Only for a model forward; results go back through ``unflatten_pairs`` at once.
  """
  return x.reshape((x.shape[0] * 2,) + x.shape[2:])


def unflatten_pairs(x: jax.Array) -> jax.Array:
  """[2B, ...] -> [B, 2, ...], the inverse of ``flatten_pairs``."""
  return x.reshape((x.shape[0] // 2, 2) + x.shape[1:])


def call_seed(*parts: Any) -> int:
  """A 31-bit sampler seed as a pure function of ``parts`` (stable across reruns)."""
  key = "/".join(map(str, parts)).encode()
  return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def write_jsonl_atomic(path: str, rows: Sequence[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=True) + "\n")
  os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Shards:
  """A resumable job over ``num_items`` items in shards of ``shard_size``: each finished
  shard is one JSONL file ``{directory}/shard_NNNNN.jsonl`` (written atomically), and a
  rerun does only the shards whose file is missing. ``open`` checks the run's spec."""

  directory: str
  num_items: int
  shard_size: int

  @classmethod
  def open(cls, directory: str, spec: dict, num_items: int, shard_size: int) -> "Shards":
    os.makedirs(directory, exist_ok=True)
    check_spec(directory, spec)
    return cls(directory, num_items, shard_size)

  @property
  def num_shards(self) -> int:
    return -(-self.num_items // self.shard_size)

  def path(self, shard: int) -> str:
    return os.path.join(self.directory, f"shard_{shard:05d}.jsonl")

  def items(self, shard: int) -> range:
    """Indices of the items of ``shard``."""
    return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_items))

  def todo(self) -> list[int]:
    return [s for s in range(self.num_shards) if not os.path.isfile(self.path(s))]

  def write(self, shard: int, rows: Sequence[dict]) -> None:
    write_jsonl_atomic(self.path(shard), rows)

  def read_all(self) -> list[dict]:
    """Every shard's rows, in shard order (all shards must be finished)."""
    rows = []
    for s in range(self.num_shards):
      with open(self.path(s), encoding="utf-8") as f:
        rows += [json.loads(line) for line in f]
    return rows


def check_spec(shard_dir: str, spec: dict) -> None:
  """Writes the run spec, or checks that existing shards were made with the same one."""
  path = os.path.join(shard_dir, SPEC_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    if old != spec:
      diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
      raise ValueError(f"{shard_dir} holds shards of another configuration (differs in "
                       f"{diff}); use a new workdir or delete the shards")
    return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(spec, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def decode_generated(tokenizer: Any, ids: Sequence[int]) -> str:
  """Generated body ids -> text, cut at the end of turn. Ids past the tokenizer's
  vocabulary (a model vocabulary padded for sharding) decode to nothing."""
  return tokenizer.decode_body([i for i in ids if i < tokenizer.vocab_size]).strip()
