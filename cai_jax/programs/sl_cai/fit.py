"""``sft_fit``: does a fine-tuned model reproduce its own training targets?

For a sample of the conversations it was fine-tuned on (e.g. the SL-CAI mix of final
revisions and helpful answers), the model answers the turns before the last assistant
turn greedily, and its answer is compared with that turn: the share whose first
``prefix_words`` words agree (the decision the answer opens with: refuse, explain, help)
and the share that agree exactly. It reads only the training data, so it is a check of
the fine-tuning that needs no evaluation set and no oracle: an SL-CAI model that still
answers red-team prompts the way the helpful-only model did, although its targets are
revisions, shows it here (a low ``prefix_match``) while its training loss looks normal.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import gin
import numpy as np

from cai_jax import constitution as cc
from cai_jax import workdir as workdir_lib
from cai_jax.data.conversations import read_conversations
from cai_jax.data.dialogue import ASSISTANT
from cai_jax.models.store import SavedModel
from cai_jax.sampling import Sampler, generate_texts
from cai_jax.sharding import build_mesh
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC

_log = logging.getLogger(__name__)


def opening(text: str, words: int) -> tuple[str, ...]:
  """The first ``words`` whitespace-separated words, lower-cased."""
  return tuple(text.lower().split()[:words])


@gin.configurable
@program("sft_fit", inputs=("model", "data", "tokenizer_path"), cosmetic=COSMETIC)
def sft_fit(workdir: str, *, model: str = gin.REQUIRED, data: str = gin.REQUIRED,
            n: int = 256, prefix_words: int = 4, max_new_tokens: int = 96,
            batch_size: int = 64, seed: int = 0, tokenizer_path: str | None = None,
            mesh_shape: Sequence[int] = (-1, 1, 1)) -> dict:
  """Writes ``{workdir}/results.json`` (``prefix_match``, ``exact_match``, ``n``) and
  ``answers.jsonl`` (target and greedy answer per conversation); returns the results.

  Args:
    workdir: output folder.
    model: the fine-tuned LM (a saved model folder).
    data: its training conversations (JSONL, ``data.conversations`` format; the last
      assistant turn is the target), e.g. ``sl_data/sl_conversations.jsonl``.
    n: how many conversations (a seeded sample; all when fewer).
    prefix_words: how many opening words must agree for ``prefix_match``.
    max_new_tokens: the answer budget.
    batch_size: prompts per sampler call.
    seed: which conversations.
    tokenizer_path: default: the model's own.
    mesh_shape: (data, fsdp, tensor) sizes; one may be -1.
  """
  if n < 1 or prefix_words < 1:
    raise ValueError(f"sft_fit: n and prefix_words must be >= 1, got {n} and {prefix_words}")
  saved = SavedModel.open(model, role="sft_fit.model").require_kind("lm", "sft_fit.model")
  convs = read_conversations(workdir_lib.resolve_input(data))
  rows = []
  for turns in convs:
    last = max(i for i, t in enumerate(turns) if t.role == ASSISTANT)
    if last > 0:
      rows.append((turns[:last], turns[last].text))
  if not rows:
    raise ValueError(f"sft_fit: {data} holds no conversation with a prompt before its "
                     "assistant turn")
  pick = np.random.default_rng(seed).permutation(len(rows))[:n]
  rows = [rows[i] for i in sorted(pick)]
  tok = saved.tokenizer(tokenizer_path)
  mesh = build_mesh(mesh_shape)
  sampler = Sampler(*saved.load(mesh=mesh), mesh=mesh)
  prompts = [cc.initial_prompt(list(p)).token_ids(tok) for p, _ in rows]
  answers = generate_texts(sampler, tok, prompts, batch_size=batch_size,
                           max_new_tokens=max_new_tokens)
  prefix = [opening(a, prefix_words) == opening(t, prefix_words) for (_, t), a in
            zip(rows, answers)]
  exact = [" ".join(a.split()) == " ".join(t.split()) for (_, t), a in zip(rows, answers)]
  res = {"n": len(rows), "prefix_words": prefix_words,
         "prefix_match": float(np.mean(prefix)), "exact_match": float(np.mean(exact))}
  workdir_lib.write_jsonl(os.path.join(workdir, "answers.jsonl"), [
      {"prompt": p[-1].text, "target": t, "answer": a, "prefix_match": m}
      for (p, t), a, m in zip(rows, answers, prefix)])
  workdir_lib.write_json(os.path.join(workdir, "results.json"), res)
  _log.info("sft_fit: %s", res)
  print(f"sft_fit: {res['prefix_match']:.3f} of {res['n']} answers open like their target "
        f"({prefix_words} words), {res['exact_match']:.3f} equal it", flush=True)
  return res
