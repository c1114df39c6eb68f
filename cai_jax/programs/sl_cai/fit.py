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
from typing import Callable, Sequence

import gin
import numpy as np

from cai_jax import constitution as cc
from cai_jax import paths
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
  workdir_lib.write_jsonl(paths.join(workdir, "answers.jsonl"), [
      {"prompt": p[-1].text, "target": t, "answer": a, "prefix_match": m}
      for (p, t), a, m in zip(rows, answers, prefix)])
  workdir_lib.write_json(paths.join(workdir, "results.json"), res)
  _log.info("sft_fit: %s", res)
  print(f"sft_fit: {res['prefix_match']:.3f} of {res['n']} answers open like their target "
        f"({prefix_words} words), {res['exact_match']:.3f} equal it", flush=True)
  return res


@gin.configurable
@program("sft_until_fit", inputs=("train_data", "init_model"), cosmetic=COSMETIC)
def sft_until_fit(workdir: str, *, train: Callable = gin.REQUIRED,
                  train_data: str = gin.REQUIRED, init_model: str = gin.REQUIRED,
                  schedules: Sequence[int] = gin.REQUIRED, threshold: float = 0.9,
                  fit_n: int = 256, fit_seed: int = 0, prefix_words: int = 4,
                  fit_max_new_tokens: int = 96) -> str:
  """Fine-tunes with the shortest schedule whose model reproduces its training targets.

  Each candidate in ``schedules`` (optimizer steps, shortest first, e.g. one, two and three
  epochs) is a complete run of ``train`` from ``init_model`` in ``{workdir}/steps{N}/``,
  checked with ``sft_fit`` on ``fit_n`` of its own training conversations. The first whose
  ``prefix_match`` reaches ``threshold`` is the result; when none does, the last one is,
  and ``schedule.json`` says ``passed: false``. The rule reads only the training data:
  no evaluation set, no oracle. Resumable: finished candidates are skipped.

  Args:
    workdir: output folder: one sub-folder per tried candidate, ``schedule.json`` and the
      chosen ``model/``.
    train: an SFT program (e.g. ``@sl/sft``), called with ``train_data``, ``init_model``
      and ``num_steps``.
    train_data, init_model: passed to ``train`` (and ``train_data`` to ``sft_fit``).
    schedules: candidate step counts, strictly increasing.
    threshold: the ``prefix_match`` a model must reach.
    fit_n, fit_seed, prefix_words, fit_max_new_tokens: ``sft_fit``'s ``n``, ``seed``,
      ``prefix_words`` and ``max_new_tokens``.

  Returns:
    The chosen model's folder, ``{workdir}/model``.
  """
  schedules = [int(s) for s in schedules]
  if not schedules or any(s < 1 for s in schedules) or any(
      b <= a for a, b in zip(schedules, schedules[1:])):
    raise ValueError(f"sft_until_fit: schedules must be positive and strictly increasing, "
                     f"got {schedules}")
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"sft_until_fit: threshold must be in (0, 1], got {threshold}")
  tried = []
  for steps in schedules:
    sub = paths.join(workdir, f"steps{steps}")
    model = train(sub, train_data=train_data, init_model=init_model, num_steps=steps)
    res = sft_fit(paths.join(sub, "fit"), model=model, data=train_data, n=fit_n,
                  seed=fit_seed, prefix_words=prefix_words, max_new_tokens=fit_max_new_tokens)
    tried.append({"num_steps": steps, "prefix_match": res["prefix_match"],
                  "exact_match": res["exact_match"], "model": paths.relpath(model, workdir)})
    _log.info("sft_until_fit: %d steps -> prefix_match %.3f (threshold %.2f)", steps,
              res["prefix_match"], threshold)
    if res["prefix_match"] >= threshold:
      break
  chosen, passed = tried[-1], tried[-1]["prefix_match"] >= threshold
  if not passed:
    _log.warning("sft_until_fit: no schedule reached prefix_match %.2f (best of %s: %.3f); "
                 "using the longest", threshold, schedules,
                 max(t["prefix_match"] for t in tried))
  out, tmp = paths.join(workdir, "model"), paths.join(workdir, "model.tmp")
  for path in (out, tmp):
    paths.rmtree(path, missing_ok=True)
  paths.copytree(paths.join(workdir, chosen["model"]), tmp)
  SavedModel.open(tmp).update_info({"schedule": {"num_steps": chosen["num_steps"],
                                                 "fit_prefix_match": chosen["prefix_match"],
                                                 "passed": passed}})
  paths.replace(tmp, out)
  workdir_lib.write_json(paths.join(workdir, "schedule.json"), {
      "threshold": threshold, "candidates": schedules, "tried": tried,
      "chosen_steps": chosen["num_steps"], "passed": passed})
  print(f"sft_until_fit: {chosen['num_steps']} steps chosen (prefix_match "
        f"{chosen['prefix_match']:.3f}, threshold {threshold:.2f}"
        f"{'' if passed else ', NOT reached'}); tried "
        + ", ".join(f"{t['num_steps']}: {t['prefix_match']:.3f}" for t in tried), flush=True)
  return out
