"""Resumable sharded jobs: each finished shard of work is one JSONL file.

A job over ``num_items`` items (prompts) runs in shards of ``shard_size``; a finished
shard is written atomically to ``{directory}/shard_NNNNN.jsonl`` and a rerun does only
the shards whose file is missing, so killing the job and running the same command again
gives the same rows as an uninterrupted run. ``spec.json`` holds the job's configuration:
a rerun with another configuration is refused instead of mixing two runs.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from cai_jax import paths
from cai_jax import workdir as workdir_lib

SPEC_FILE = "spec.json"


def check_spec(directory: str, spec: dict) -> None:
  """Writes the job spec, or checks that existing shards were made with the same one (a
  spec without any shard, left by a run that failed before its first shard, is
  replaced)."""
  path = paths.join(directory, SPEC_FILE)
  has_shards = any(n.startswith("shard_") and n.endswith(".jsonl")
                   for n in paths.listdir(directory)) if paths.isdir(directory) else False
  if paths.isfile(path) and has_shards:
    old = workdir_lib.read_json(path)
    if old != spec:
      diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
      raise ValueError(f"{directory} holds shards of another configuration (differs in "
                       f"{diff}); use a new workdir or delete the shards")
    return
  workdir_lib.write_json(path, spec)


@dataclasses.dataclass(frozen=True)
class Shards:
  """The shards of one job (see the module docstring); ``open`` checks the spec."""

  directory: str
  num_items: int
  shard_size: int

  @classmethod
  def open(cls, directory: str, spec: dict, num_items: int, shard_size: int) -> Shards:
    if shard_size < 1:
      raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    paths.makedirs(directory)
    check_spec(directory, spec)
    return cls(directory, num_items, shard_size)

  @property
  def num_shards(self) -> int:
    return -(-self.num_items // self.shard_size)

  def path(self, shard: int) -> str:
    return paths.join(self.directory, f"shard_{shard:05d}.jsonl")

  def items(self, shard: int) -> range:
    """Indices of the items of ``shard``."""
    return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_items))

  def todo(self) -> list[int]:
    """The shards not yet written, in order."""
    return [s for s in range(self.num_shards) if not paths.isfile(self.path(s))]

  def num_items_todo(self) -> int:
    return sum(len(self.items(s)) for s in self.todo())

  def write(self, shard: int, rows: Sequence[dict]) -> None:
    workdir_lib.write_jsonl(self.path(shard), rows)

  def read_all(self) -> list[dict]:
    """Every shard's rows, in shard order (all shards must be finished)."""
    rows = []
    for s in range(self.num_shards):
      with paths.open(self.path(s)) as f:
        rows += [json.loads(line) for line in f]
    return rows
