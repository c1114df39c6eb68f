"""A guard in front of any model: how much red-team traffic it blocks, at what cost.

``guard_eval`` answers held-out red-team prompts (in every jailbreak shape of
``transforms``) and helpfulness prompts with the policy, unguarded and behind each guard of
``cai_jax.classifiers.measure.GUARDS`` (input, exchange, both), and reports per traffic
set: the share blocked (and by the input classifier), on helpfulness prompts the false
refusals, and the time of the guarded over the unguarded sampler on the same prompts
(each timed on a compiled second pass, in the same run). Thresholds come from benign
calibration prompts the classifiers did not train on (``classifier_data``'s
``inputs.eval.jsonl``) at a ``false_refusal_rate`` budget, or are given.

There is no ground truth here: whether an unblocked answer is harmful is for a grader
to say (the toy world's ``toy_guard_eval`` has its oracle). ``answers.jsonl`` holds every
answer unguarded and guarded, with the guard's report, for one.

  python -m cai_jax.main --gin_file=experiments/smollm2_guard.gin --workdir=runs/smollm2_guard
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import gin
import numpy as np

from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.classifiers import measure
from cai_jax.constitution import initial_prompt
from cai_jax.data.conversations import read_prompts
from cai_jax.data.dialogue import HUMAN
from cai_jax.data.jailbreaks import TRANSFORMS, check_transforms, transform
from cai_jax.models.store import SavedModel
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC
from cai_jax.sampling import Sampler


def traffic(tok, red_team: list, helpful: list, transforms: Sequence[str], seed: int
            ) -> dict[str, list[list[int]]]:
  """{set: prompt ids}: red-team prompts in every shape (multi-turn ones only plain),
  helpfulness prompts plain."""
  sets = {}
  for name in transforms:
    sets[f"red_team/{name}"] = [
        initial_prompt(transform(t[0].text, name, seed + i)
                       if len(t) == 1 and t[0].role == HUMAN else list(t)).token_ids(tok)
        for i, t in enumerate(red_team)]
  sets["helpful"] = [initial_prompt(list(t)).token_ids(tok) for t in helpful]
  return sets


def _rows(sampler, tok, clfs, sets, thresholds, *, check_every, batch_size, max_new_tokens,
          refusal, log, warmup):
  rows = []
  for set_name, prompts in sets.items():
    plain, t_plain = measure.unguarded(sampler, tok, prompts, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, warmup=warmup)
    for guard in measure.GUARDS:
      g = measure.make_guard(sampler, clfs, guard, thresholds, check_every=check_every,
                             refusal=refusal)
      answers, _, reports, t_guard = measure.guarded(
          g, tok, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
          warmup=warmup)
      blocked = [r["blocked_at"] for r in reports]
      rows.append({"set": set_name, "guard": guard, "n": len(prompts),
                   "blocked": float(np.mean([b is not None for b in blocked])),
                   "blocked_input": float(np.mean([b == "input" for b in blocked])),
                   "overhead": t_guard / t_plain})
      log.extend({"set": set_name, "guard": guard, "prompt": tok.decode(p),
                  "unguarded": u, "guarded": a, "report": r}
                 for p, u, a, r in zip(prompts, plain, answers, reports))
  return rows


def results_table(rows: list[dict]) -> str:
  """Markdown: one line per traffic set x guard."""
  head = ("| traffic | guard | n | blocked (by input) | time guarded / unguarded |\n"
          "|---|---|---|---|---|\n")
  return head + "".join(
      f"| {r['set']} | {r['guard']} | {r['n']} | {r['blocked']:.3f} "
      f"({r['blocked_input']:.3f}) | {r['overhead']:.2f}x |\n" for r in rows)


@gin.configurable
@program("guard_eval", inputs=("policy", "input_classifier", "exchange_classifier",
                               "red_team_prompts", "helpful_prompts", "calibration_prompts?"),
         cosmetic=COSMETIC + ("batch_size", "timing_warmup"))
def guard_eval(workdir: str, *, policy: str = gin.REQUIRED,
               input_classifier: str = gin.REQUIRED, exchange_classifier: str = gin.REQUIRED,
               red_team_prompts: str = gin.REQUIRED, helpful_prompts: str = gin.REQUIRED,
               calibration_prompts: str | None = None,
               thresholds: Mapping[str, float] | None = None, num_calibration: int = 256,
               false_refusal_rate: float = 0.02, check_every: int = 8,
               transforms: Sequence[str] = tuple(TRANSFORMS), max_prompts: int | None = None,
               max_new_tokens: int = 64, batch_size: int = 16,
               refusal_text: str = "I can't help with that.", seed: int = 0,
               timing_warmup: bool = True) -> dict:
  """The guard table (module docstring); returns the results.

  Args:
    workdir: output folder (``results.json``, ``results.md``, ``answers.jsonl``).
    policy: the guarded model (saved LM or Hugging Face folder).
    input_classifier, exchange_classifier: ``train_classifier`` models of those kinds, on
      the policy's tokenizer.
    red_team_prompts, helpful_prompts: held-out prompt files.
    calibration_prompts: a classifier-data JSONL whose benign plain rows set the
      thresholds; or ``thresholds``: fixed ``{"input": t, "output": t}``.
    num_calibration, false_refusal_rate: calibration prompts used, the budget on them
      (half input, half output).
    check_every: tokens between two output checks.
    transforms: jailbreak shapes of the red-team prompts.
    max_prompts: first prompts of each file.
    max_new_tokens, batch_size: greedy answering.
    refusal_text: a blocked row's answer.
    seed: the transforms' draws.
    timing_warmup: time a second, compiled pass of each traffic set (False: one pass,
      timings include compilation; for tests).
  """
  measure.check_thresholds(thresholds, calibration_prompts, "guard_eval")
  check_transforms(transforms, "guard_eval")
  red = [t for _, t in read_prompts(workdir_lib.resolve_input(red_team_prompts))][:max_prompts]
  helpful = [t for _, t in read_prompts(workdir_lib.resolve_input(helpful_prompts))
             ][:max_prompts]
  calib = (measure.benign_prompts(workdir_lib.resolve_input(calibration_prompts),
                                  num_calibration) if thresholds is None else [])
  clfs = measure.load_classifiers(input_classifier, exchange_classifier, "guard_eval")
  saved = SavedModel.open(policy, role="guard_eval.policy").require_kind("lm", "guard_eval")
  for kind, clf in clfs.items():
    if clf.cfg.vocab_size != saved.config.vocab_size:
      raise ValueError(f"guard_eval.{kind}_classifier has a vocabulary of "
                       f"{clf.cfg.vocab_size}, the policy {saved.config.vocab_size}: the "
                       "classifier must read the policy's tokens")
  tok, sampler = saved.tokenizer(), Sampler(*saved.load())
  kw = dict(check_every=check_every, batch_size=batch_size, max_new_tokens=max_new_tokens)
  used = dict(thresholds) if thresholds is not None else measure.calibrate(
      sampler, tok, clfs, [initial_prompt(list(t)).token_ids(tok) for t in calib],
      rate=false_refusal_rate, **kw)
  log: list[dict] = []
  rows = _rows(sampler, tok, clfs, traffic(tok, red, helpful, transforms, seed), used,
               refusal=tok.encode(refusal_text), log=log, warmup=timing_warmup, **kw)
  results = {"policy": saved.path, "rows": rows, "thresholds": used,
             "false_refusal_rate": false_refusal_rate, "check_every": check_every}
  table = results_table(rows)
  workdir_lib.write_json(paths.join(workdir, "results.json"), results, sort_keys=False)
  workdir_lib.write_text(paths.join(workdir, "results.md"), table)
  workdir_lib.write_text(paths.join(workdir, "answers.jsonl"),
                         "".join(json.dumps(r) + "\n" for r in log))
  print(table, flush=True)
  return results
