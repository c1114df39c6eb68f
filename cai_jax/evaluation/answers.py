"""Greedy answers of saved models to held-out prompt sets, cached in a workdir.

Shared by the evaluation programs (``judge_eval``, ``pairwise_eval``): each model answers
each set once; ``answers/<name>.<set>.jsonl`` holds the rows (``id``, ``prompt``: the last
request turn, ``answer``) and a rerun reads them back instead of sampling again.
"""
from __future__ import annotations

import gc
import os
from typing import Mapping

import tqdm

from cai_jax import constitution as cc
from cai_jax import workdir as workdir_lib
from cai_jax.data.conversations import read_jsonl
from cai_jax.models.store import SavedModel
from cai_jax.sampling import Sampler, generate_texts


def answers_file(workdir: str, name: str, kind: str) -> str:
  """Where ``model_answers`` keeps model ``name``'s answers to set ``kind``."""
  return os.path.join(workdir, "answers", f"{name}.{kind}.jsonl")


def model_answers(name: str, path: str, sets: Mapping[str, list], workdir: str, mesh, *,
                  batch_size: int, max_new_tokens: int, role: str = "evaluation"
                  ) -> dict[str, list[dict]]:
  """Greedy answers of one model to every prompt set (``{kind: [(id, turns)]}``).

  Returns ``{kind: rows}``, one row per prompt in the set's order; sets answered by an
  earlier run are read from ``answers/`` (the model is loaded only if a set is missing).
  """
  out, todo = {}, {}
  for kind, prompts in sets.items():
    file = answers_file(workdir, name, kind)
    if os.path.exists(file):
      out[kind] = read_jsonl(file, lambda r: r)
    else:
      todo[kind] = (file, prompts)
  if not todo:
    return out
  saved = SavedModel.open(path, role=f"{role}.models[{name!r}]").require_kind(
      "lm", f"{role} model")
  tok = saved.tokenizer()
  sampler = Sampler(*saved.load(mesh=mesh), mesh=mesh)
  for kind, (file, prompts) in todo.items():
    ids = [cc.initial_prompt(turns).token_ids(tok) for _, turns in prompts]
    texts = []
    for i in tqdm.trange(0, len(ids), batch_size, desc=f"answers {name}/{kind}",
                         disable=None):
      texts += generate_texts(sampler, tok, ids[i:i + batch_size], batch_size=batch_size,
                              max_new_tokens=max_new_tokens)
    rows = [{"id": pid, "prompt": turns[-1].text, "answer": a}
            for (pid, turns), a in zip(prompts, texts)]
    workdir_lib.write_jsonl(file, rows)
    out[kind] = rows
  del sampler
  gc.collect()
  return out
