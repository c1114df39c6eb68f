"""Greedy answers of saved models to held-out prompt sets, cached in a workdir.

Shared by the evaluation programs (``judge_eval``, ``pairwise_eval``): each model answers
each set once; ``answers/<name>.<set>.jsonl`` holds the rows (``id``, ``prompt``: the last
request turn, ``answer``) and a rerun reads them back instead of sampling again.
"""
from __future__ import annotations

import gc
from typing import Mapping, Sequence

import tqdm

from cai_jax import constitution as cc
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.conversations import read_jsonl
from cai_jax.models.store import SavedModel
from cai_jax.sampling import Sampler, generate_texts
from cai_jax.sharding import processes


def answers_file(workdir: str, name: str, kind: str) -> str:
  """Where ``model_answers`` keeps model ``name``'s answers to set ``kind``."""
  return paths.join(workdir, "answers", f"{name}.{kind}.jsonl")


def model_answers(name: str, path: str, sets: Mapping[str, list], workdir: str,
                  mesh_shape: Sequence[int], *, batch_size: int, max_new_tokens: int,
                  role: str = "evaluation") -> dict[str, list[dict]]:
  """Greedy answers of one model to every prompt set (``{kind: [(id, turns)]}``).

  Returns ``{kind: rows}``, one row per prompt in the set's order; sets answered by an
  earlier run are read from ``answers/`` (the model is loaded only if a set is missing).
  In a multi-process job each process answers every ``process_count()``-th batch on a
  mesh (``mesh_shape``) of its own devices; the answers are gathered on every process
  and process 0 writes the file.
  """
  out, todo = {}, {}
  for kind, prompts in sets.items():
    file = answers_file(workdir, name, kind)
    if paths.exists(file):
      out[kind] = read_jsonl(file, lambda r: r)
    else:
      todo[kind] = (file, prompts)
  if not todo:
    return out
  saved = SavedModel.open(path, role=f"{role}.models[{name!r}]").require_kind(
      "lm", f"{role} model")
  tok = saved.tokenizer()
  mesh = processes.local_mesh(mesh_shape)
  sampler = Sampler(*saved.load(mesh=mesh), mesh=mesh)
  for kind, (file, prompts) in todo.items():
    ids = [cc.initial_prompt(turns).token_ids(tok) for _, turns in prompts]
    mine = {}
    for i in tqdm.tqdm(processes.share(range(0, len(ids), batch_size)),
                       desc=f"answers {name}/{kind}", disable=None):
      mine[i] = generate_texts(sampler, tok, ids[i:i + batch_size], batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
    batches = {int(i): t for part in processes.allgather_json(f"answers:{name}:{kind}",
                                                              mine)
               for i, t in part.items()}
    texts = [a for i in sorted(batches) for a in batches[i]]
    rows = [{"id": pid, "prompt": turns[-1].text, "answer": a}
            for (pid, turns), a in zip(prompts, texts, strict=True)]
    if processes.is_chief():
      workdir_lib.write_jsonl(file, rows)
    out[kind] = rows
  del sampler
  gc.collect()
  return out
