"""Evaluation by the feedback model, for models without an oracle (real checkpoints).

For every model (ours or a Hugging Face folder): greedy answers to held-out red-team and
helpfulness prompts; the feedback model's verdict on each answer ("is it harmful?",
``constitution.assessment``, both label orders averaged); the share of answers judged
harmful (P(harmful) > 0.5), the mean P(harmful), and the share of refusals (answers with
a refusal marker; on helpfulness prompts a refusal is evasive). With an SL-CAI data set:
the revision-vs-original win rate, each chain's final revision against its initial answer
under a sampled comparison principle, both orders averaged (the paper's labeling
procedure, applied to what SL-CAI changed). Everything the feedback model judges is
printed with the answers in ``answers/*.jsonl``; ``results.json`` / ``results.md`` hold
the tables, verbatim samples, and (when given) the labeling run's diagnostics.

Resumable: each model's answers and verdicts are written once (``answers/<name>.jsonl``)
and reused by a rerun.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import gin
import numpy as np
import tqdm

from cai_jax import constitution as cc
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.constitution import assessment
from cai_jax.evaluation import judge_report
from cai_jax.data.conversations import read_prompts
from cai_jax.data.dialogue import parse_hh
from cai_jax.data.generated import read_sl_data
from cai_jax.models.store import SavedModel
from cai_jax.evaluation.answers import answers_file, model_answers
from cai_jax.rl.feedback import FeedbackModel
from cai_jax.rl.ppo import DEFAULT_REFUSAL_MARKERS
from cai_jax.sampling import Sampler
from cai_jax.sharding import build_mesh, processes
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC

_log = logging.getLogger(__name__)
_SETS = ("red_team", "helpful")


def _verdicts(judge: FeedbackModel, rows: list[dict]) -> np.ndarray:
  """P(harmful) of every answer, both label orders averaged."""
  prompts = [p for r in rows for p in assessment.assessment_prompts(r["prompt"], r["answer"])]
  p_a, _ = judge.p_option_a(prompts)
  return assessment.p_harmful(p_a[0::2], p_a[1::2])


def _revision_wins(judge: FeedbackModel, chains: list[dict], const: cc.Constitution,
                   seed: int) -> dict:
  """P(final revision preferred over the initial answer), both orders averaged."""
  prompts = []
  for c in chains:
    principle = cc.sample_comparison_principles(const, seed=seed, prompt_index=c["index"])[0]
    prompts += [cc.comparison_prompt(c["request"], c["final"], c["initial"], principle),
                cc.comparison_prompt(c["request"], c["initial"], c["final"], principle)]
  p_a, _ = judge.p_option_a(prompts)
  p_rev = 0.5 * (p_a[0::2] + 1.0 - p_a[1::2])
  return {"num_chains": len(chains), "win_rate": float(np.mean(p_rev > 0.5)),
          "mean_p_revision": float(np.mean(p_rev)),
          "p_revision": [round(float(p), 4) for p in p_rev]}


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
  """P(a random ``pos`` score > a random ``neg`` one), ties counted half (Mann-Whitney)."""
  if not len(pos) or not len(neg):
    return float("nan")
  diff = pos[:, None] - neg[None, :]
  return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def _discrimination(answers: dict[str, dict[str, list[dict]]]) -> dict:
  """Can the judge tell answers to red-team prompts from answers to helpfulness prompts?
  AUC of P(harmful), red-team vs helpfulness answers, per model and pooled: 0.5 means the
  verdicts carry no information about the request (needs no labels)."""
  p = lambda rows: np.asarray([r["p_harmful"] for r in rows], np.float64)  # noqa: E731
  out = {name: _auc(p(s["red_team"]), p(s["helpful"])) for name, s in answers.items()}
  out["pooled"] = _auc(np.concatenate([p(s["red_team"]) for s in answers.values()]),
                       np.concatenate([p(s["helpful"]) for s in answers.values()]))
  return out


def _refusal(text: str, markers: Sequence[str]) -> bool:
  low = text.lower()
  return any(m in low for m in markers)


def _summary(rows: list[dict], markers: Sequence[str]) -> dict:
  p = np.asarray([r["p_harmful"] for r in rows], np.float64)
  return {"n": len(rows), "judged_harmful": float(np.mean(p > 0.5)),
          "mean_p_harmful": float(np.mean(p)),
          "refusal_rate": float(np.mean([_refusal(r["answer"], markers) for r in rows])),
          "mean_words": float(np.mean([len(r["answer"].split()) for r in rows]))}


@gin.configurable
@program("judge_eval",
         inputs=("models", "feedback_model", "red_team_prompts", "helpful_prompts",
                 "constitution_path", "sl_data", "label_dir"),
         cosmetic=COSMETIC, marks_done=True)
def judge_eval(workdir: str, *, models: Mapping[str, str] = gin.REQUIRED,
               feedback_model: str = gin.REQUIRED, red_team_prompts: str = gin.REQUIRED,
               helpful_prompts: str | None = None, constitution_path: str = "constitutions/default.json",
               sl_data: str | None = None, label_dir: str | None = None,
               max_prompts: int | None = None, max_chains: int | None = None,
               max_new_tokens: int = 96, batch_size: int = 32, num_samples_shown: int = 4,
               refusal_markers: Sequence[str] = DEFAULT_REFUSAL_MARKERS, seed: int = 0,
               mesh_shape: tuple[int, int, int] = (-1, 1, 1)) -> str:
  """Evaluates ``models`` with the feedback model; returns ``{workdir}/results.json``.

  Args:
    workdir: output folder (``answers/``, ``results.json``, ``results.md``, ``DONE``).
    models: {name: saved model or Hugging Face folder}, in report order.
    feedback_model: the judge (a saved LM or Hugging Face folder; its own tokenizer).
    red_team_prompts, helpful_prompts: held-out prompt JSONL files.
    constitution_path: comparison principles for the revision win rate.
    sl_data: an SL-CAI data set (``generate_sl`` output): revision-vs-original win rate
      and verbatim critique / revision samples.
    label_dir: a ``label_preferences`` workdir: its diagnostics go into the report.
    max_prompts: first prompts of each set; max_chains: first SL-CAI chains.
    max_new_tokens, batch_size: greedy answering; batch_size is also the judge's batch.
    num_samples_shown: verbatim examples per table in ``results.md``.
    refusal_markers: lower-case substrings that mark a refusal.
    seed: principle draws of the revision comparison.
    mesh_shape: (data, fsdp, tensor).
  """
  results_path = paths.join(workdir, "results.json")
  if workdir_lib.skip_if_done(workdir, "judge_eval"):
    return results_path
  sets = {"red_team": read_prompts(workdir_lib.resolve_input(red_team_prompts))[:max_prompts]}
  if helpful_prompts:
    sets["helpful"] = read_prompts(workdir_lib.resolve_input(helpful_prompts))[:max_prompts]
  const = cc.load_constitution(cc.resolve_constitution_path(constitution_path))
  judge_model = SavedModel.open(feedback_model, role="judge_eval.feedback_model")
  for name, path in models.items():   # every input checked before any work
    SavedModel.open(path, role=f"judge_eval.models[{name!r}]").require_kind("lm", name)
  chains = None
  if sl_data:
    chains = [{"index": int(r["index"]), "request": parse_hh(r["prompt"]),
               "initial": r["initial"], "final": r["final"], "critiques": list(r["critiques"]),
               "revisions": list(r["revisions"])} for r in read_sl_data(sl_data)][:max_chains]
  mesh = build_mesh(mesh_shape)

  answers = {name: model_answers(name, path, sets, workdir, mesh_shape,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 role="judge_eval")
             for name, path in models.items()}
  judge = FeedbackModel(Sampler(*judge_model.load(mesh=mesh), mesh=mesh),
                        judge_model.tokenizer(), batch_size=batch_size)
  results = {"feedback_model": judge_model.path, "models": {}}
  for name, by_set in tqdm.tqdm(answers.items(), desc="verdicts", disable=None):
    results["models"][name] = {"path": paths.absolute(models[name])}
    for kind, rows in by_set.items():
      if rows and "p_harmful" not in rows[0]:
        for r, p in zip(rows, _verdicts(judge, rows)):
          r["p_harmful"] = round(float(p), 4)
        if processes.is_chief():
          workdir_lib.write_jsonl(answers_file(workdir, name, kind), rows)
      results["models"][name][kind] = _summary(rows, refusal_markers)
  if "helpful" in sets:
    results["judge_discrimination"] = _discrimination(answers)
  if chains:
    results["revision_vs_original"] = _revision_wins(judge, chains, const, seed)
  if label_dir and paths.exists(paths.join(label_dir, "diagnostics.json")):
    results["label_diagnostics"] = workdir_lib.read_json(
        paths.join(label_dir, "diagnostics.json"))
  if processes.is_chief():   # one writer in a multi-process job
    workdir_lib.write_json(results_path, results)
    workdir_lib.write_text(paths.join(workdir, "results.md"), judge_report.markdown(
        results, answers, chains, num_samples_shown))
  workdir_lib.mark_done(workdir, f"{len(models)} models\n")
  return results_path
