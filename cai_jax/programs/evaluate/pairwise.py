"""Pairwise evaluation with Elo scores, the way the Constitutional AI paper reports results.

Every model answers the held-out red-team and helpfulness prompts once (greedy,
``answers/``). For every pair of models and every prompt a judge compares the two answers:

* a feedback model (a saved LM or Hugging Face folder), in the paper's multiple-choice
  format (``constitution.comparison_prompt``), both option orders averaged:
  ``p = (P_AB("(A)") + 1 - P_BA("(A)")) / 2``; red-team prompts under a comparison principle
  of the constitution drawn per prompt (as the labeling program draws them), helpfulness
  prompts under ``helpful_principles``;
* or a preference model (a saved scalar-head model): ``p = sigmoid(r_a - r_b)``.

Elo scores are the maximum-likelihood Bradley-Terry fit on these soft outcomes
(``evaluation.elo``), with 95% intervals from a bootstrap over prompts: harmlessness Elo from
the red-team prompts, helpfulness Elo from the helpfulness prompts. Given an ``oracle``
(``oracle(request text, answer) -> utility``; the toy world has one), the same pairs are
also decided by it (the higher utility wins, equal utilities tie) and its Elo is reported
beside the judge's, with their agreement: the rank and linear correlation of the ratings and
the share of pairs with an oracle winner where the judge prefers the same answer.

Judge robustness (``injection_probe=N``, default 0: off): on each set, N of the comparisons
(drawn by ``seed``) are judged again with ``injection_text`` (``rl.injection.DEFAULT_TEXT``:
a note to the evaluator claiming this is the better answer) appended to one of the two
answers, half of them the one the judge preferred, half the other; a feedback model decides
the pair again in both orders under the same principle, a preference model scores the
injected answer again. The share of decisions that flip and the mean pull toward the
injected answer go to ``results["injection"][set]`` and the report; the Elo fits do not
use them. The probe is not part of the run's identity (a diagnostic): to add it to a
finished run, delete its ``DONE`` and run again (answers and judgments are reused).

Outputs: ``answers/``, ``judgments/<set>.jsonl`` (every comparison), ``results.json``,
``results.md``, ``pareto.png`` / ``pareto.svg`` (helpfulness Elo against harmlessness Elo,
with ``lines`` joining models along training) and, with an oracle, ``pareto_oracle.*``.
Resumable: answers and judgments are written once per model and set and read back by a
rerun.
"""
from __future__ import annotations

import itertools
import logging
from typing import Callable, Mapping, Sequence

import gin
import numpy as np
import tqdm

from cai_jax import constitution as cc
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.conversations import read_jsonl, read_prompts
from cai_jax.evaluation import elo, pairwise_report
from cai_jax.models.store import SavedModel
from cai_jax.evaluation.answers import model_answers
from cai_jax.rl import injection
from cai_jax.rl.feedback import FeedbackModel
from cai_jax.rl.reward import RewardModel
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC
from cai_jax.sampling import Sampler
from cai_jax.sharding import build_mesh, processes
from cai_jax.train.metrics import log_samples

_log = logging.getLogger(__name__)
SETS = {"red_team": "harmlessness", "helpful": "helpfulness"}
DEFAULT_HELPFUL_PRINCIPLES = ("Which response is more helpful?",)


def _pairs(n: int) -> list[tuple[int, int]]:
  return list(itertools.combinations(range(n), 2))


def _principles(kind: str, n: int, const: cc.Constitution, helpful: Sequence[str],
                seed: int) -> list[str]:
  """One comparison principle per prompt (the same for every pair of models on it)."""
  if kind == "red_team":
    return [cc.sample_comparison_principles(const, seed=seed, prompt_index=i)[0].text
            for i in range(n)]
  rng = np.random.default_rng([seed, 1])
  return [helpful[k] for k in rng.integers(0, len(helpful), size=n)]


def _feedback_judgments(judge: FeedbackModel, turns: list, answers: list[list[dict]],
                        principles: list[str], kind: str) -> list[dict]:
  """Every pair of models on every prompt, both option orders (see the module docstring)."""
  rows = []
  for a, b in tqdm.tqdm(_pairs(len(answers)), desc=f"judge {kind}", disable=None):
    prompts = []
    for i, req in enumerate(turns):
      x, y, pr = answers[a][i]["answer"], answers[b][i]["answer"], principles[i]
      prompts += [cc.comparison_prompt(req, x, y, pr), cc.comparison_prompt(req, y, x, pr)]
    p_a, _ = judge.p_option_a(prompts)
    for i in range(len(turns)):
      p_ab, p_ba = float(p_a[2 * i]), float(p_a[2 * i + 1])
      rows.append({"a": a, "b": b, "prompt": i, "p_a": 0.5 * (p_ab + 1.0 - p_ba),
                   "p_ab": p_ab, "p_ba": p_ba, "principle": principles[i]})
  return rows


def _pm_judgments(pm: RewardModel, turns: list, answers: list[list[dict]],
                  kind: str) -> list[dict]:
  """sigmoid(r_a - r_b) for every pair of models on every prompt."""
  scores = [pm.score(turns, [r["answer"] for r in rows])
            for rows in tqdm.tqdm(answers, desc=f"PM scores {kind}", disable=None)]
  rows = []
  for a, b in _pairs(len(answers)):
    for i in range(len(turns)):
      d = float(scores[a][i]) - float(scores[b][i])
      rows.append({"a": a, "b": b, "prompt": i, "p_a": float(np.exp(-np.logaddexp(0, -d))),
                   "r_a": float(scores[a][i]), "r_b": float(scores[b][i])})
  return rows


def _injection(judge_model, turns: list, answers: list[list[dict]], rows: list[dict], *,
               num: int, text: str, seed: int) -> dict:
  """The judge-robustness probe (module docstring) on ``num`` of a set's comparisons."""
  picked = [rows[i] for i in injection.select(len(rows), num, seed)]
  items = [(turns[r["prompt"]], answers[r["a"]][r["prompt"]]["answer"],
            answers[r["b"]][r["prompt"]]["answer"], r) for r in picked]
  if isinstance(judge_model, FeedbackModel):   # both orders, the row's principle
    return injection.probe_feedback(judge_model, [(t, x, y, [r["principle"]], r["p_a"])
                                                  for t, x, y, r in items], text=text, seed=seed)
  sides = injection.plan_sides([r["p_a"] for r in picked], seed)
  scores = judge_model.score([t for t, *_ in items],
                             [(x, y)[s] + text for (_, x, y, _), s in zip(items, sides)])
  after = []
  for r, s, new in zip(picked, sides, scores):   # the injected answer's new score
    d = (float(new) - r["r_b"]) if s == 0 else (r["r_a"] - float(new))
    after.append(float(np.exp(-np.logaddexp(0, -d))))
  return injection.injection_stats([r["p_a"] for r in picked], after, sides)


def _oracle_outcomes(oracle: Callable[[str, str], float], prompts: list[str],
                     answers: list[list[dict]], rows: list[dict]) -> None:
  """Adds ``oracle_p_a`` (1 / 0 / 0.5) to every judgment row, from the answers' utilities."""
  util = [[float(oracle(p, r["answer"])) for p, r in zip(prompts, model_rows)]
          for model_rows in answers]
  for r in rows:
    ua, ub = util[r["a"]][r["prompt"]], util[r["b"]][r["prompt"]]
    r["oracle_p_a"] = 1.0 if ua > ub else 0.0 if ua < ub else 0.5


def _fit(rows: list[dict], key: str, num_models: int, anchor: int | None,
         num_bootstrap: int, seed: int) -> dict:
  """Elo ratings with 95% prompt-bootstrap intervals from the ``key`` outcomes."""
  comps = elo.Comparison(a=np.array([r["a"] for r in rows]), b=np.array([r["b"] for r in rows]),
                         p_a=np.array([r[key] for r in rows]),
                         prompt=np.array([r["prompt"] for r in rows]))
  fit = elo.bootstrap_elo(comps, num_models, num_samples=num_bootstrap, seed=seed,
                          anchor=anchor)
  out = {k: [round(float(v), 2) for v in getattr(fit, k)]
         for k in ("ratings", "lower", "upper", "stderr")}
  wins = np.full((num_models, num_models), np.nan)
  for a, b in _pairs(num_models):
    p = np.mean([r[key] for r in rows if r["a"] == a and r["b"] == b])
    wins[a, b], wins[b, a] = p, 1.0 - p
  out["win_rate"] = [[None if np.isnan(v) else round(float(v), 4) for v in row]
                     for row in wins]
  return out


def _agreement(rows: list[dict], judge_fit: dict, oracle_fit: dict) -> dict:
  """How the judge's Elo and pairwise preferences agree with the oracle's."""
  agree = elo.agreement(judge_fit["ratings"], oracle_fit["ratings"])
  decided = [r for r in rows if r["oracle_p_a"] != 0.5]
  same = [(r["p_a"] > 0.5) == (r["oracle_p_a"] > 0.5) for r in decided if r["p_a"] != 0.5]
  return {"spearman": float(agree.spearman), "pearson": float(agree.pearson),
          "pairwise_agreement": float(np.mean(same)) if same else float("nan"),
          "pairs_with_oracle_winner": len(decided), "pairs_total": len(rows)}


def _decision_markdown(row: dict, names: list[str], prompts: list, answers: list) -> str:
  """One judge decision as Markdown for TensorBoard's text dashboard."""
  a, b, i = row["a"], row["b"], row["prompt"]
  oracle = f", oracle {row['oracle_p_a']:.1f}" if "oracle_p_a" in row else ""
  return (f"**Prompt**\n\n{prompts[i][1][-1].text}\n\n**{names[a]}**\n\n"
          f"{answers[a][i]['answer']}\n\n**{names[b]}**\n\n{answers[b][i]['answer']}\n\n"
          f"**P({names[a]} better)** = {row['p_a']:.3f}{oracle}")


def _by_model(names: list[str], sets: dict) -> dict:
  """{model: {"harmlessness": Elo, "harmlessness_lower": ..., "oracle_helpfulness": ...}}:
  the ratings by model name (what sweeps and reports read)."""
  out = {name: {} for name in names}
  for kind, entry in sets.items():
    for source, prefix in (("judge", ""), ("oracle", "oracle_")):
      if source not in entry:
        continue
      for i, name in enumerate(names):
        axis = prefix + SETS[kind]
        out[name][axis] = entry[source]["ratings"][i]
        out[name][axis + "_lower"] = entry[source]["lower"][i]
        out[name][axis + "_upper"] = entry[source]["upper"][i]
  return out


def _check_lines(lines: Sequence[Sequence[str]], names: Sequence[str]) -> None:
  for line in lines:
    for name in line:
      if name not in names:
        raise ValueError(f"pairwise_eval.lines names {name!r}, which is not in models "
                         f"({', '.join(names)})")


def _judge(path: str, mesh, batch_size: int, max_len: int | None):
  """The judge: a FeedbackModel (LM) or a RewardModel (scalar head)."""
  saved = SavedModel.open(path, role="pairwise_eval.judge")
  if saved.kind == "scalar":
    return RewardModel.load(saved, mesh=mesh, batch_size=batch_size, max_len=max_len)
  return FeedbackModel(Sampler(*saved.load(mesh=mesh), mesh=mesh), saved.tokenizer(),
                       batch_size=batch_size)


def _judgments(workdir: str, kind: str, judge_fn, prompts: list, answers: list,
               oracle: Callable[[str, str], float] | None) -> list[dict]:
  """The set's judgment rows (with the oracle's outcomes when there is an oracle), from
  ``judgments/<kind>.jsonl`` when a run wrote them."""
  file = paths.join(workdir, "judgments", f"{kind}.jsonl")
  fresh = not paths.exists(file)
  rows = judge_fn(kind, [turns for _, turns in prompts], answers) if fresh else read_jsonl(
      file, lambda r: r)
  if oracle is not None and (fresh or "oracle_p_a" not in rows[0]):
    _oracle_outcomes(oracle, [turns[-1].text for _, turns in prompts], answers, rows)
    fresh = True
  if fresh and processes.is_chief():   # one writer in a multi-process job
    workdir_lib.write_jsonl(file, rows)
  return rows


@gin.configurable
@program("pairwise_eval",
         inputs=("models", "judge", "red_team_prompts", "helpful_prompts",
                 "constitution_path"),
         cosmetic=COSMETIC + ("lines", "injection_probe", "injection_text"), marks_done=True,
         checks_extra={"injection_probe": lambda v: None if v >= 0 else "must be >= 0"})
def pairwise_eval(workdir: str, *, models: Mapping[str, str] = gin.REQUIRED,
                  judge: str = gin.REQUIRED, red_team_prompts: str = gin.REQUIRED,
                  helpful_prompts: str = gin.REQUIRED,
                  constitution_path: str = "constitutions/default.json",
                  helpful_principles: Sequence[str] = DEFAULT_HELPFUL_PRINCIPLES,
                  oracle: Callable[[str, str], float] | None = None,
                  anchor: str | None = None, lines: Sequence[Sequence[str]] = (),
                  max_prompts: int | None = None, max_new_tokens: int = 96,
                  batch_size: int = 32, judge_max_len: int | None = None,
                  num_bootstrap: int = 1000, seed: int = 0,
                  mesh_shape: tuple[int, int, int] = (-1, 1, 1), injection_probe: int = 0,
                  injection_text: str = injection.DEFAULT_TEXT) -> str:
  """Pairwise comparisons and Elo scores of ``models``; returns ``{workdir}/results.json``.

  Args:
    workdir: output folder (module docstring).
    models: {name: saved model or Hugging Face folder}, at least two, in report order.
    judge: a feedback model (LM) or a preference model (scalar head).
    red_team_prompts, helpful_prompts: held-out prompt files (harmlessness, helpfulness).
    constitution_path: the comparison principles for red-team prompts.
    helpful_principles: the question(s) asked on helpfulness prompts (one drawn per prompt).
    oracle: ``oracle(request text, answer) -> utility`` (ground truth, evaluation only).
    anchor: the model whose Elo is 0 (None: ratings average 0).
    lines: model names joined by a line in the Pareto plot (e.g. along training).
    max_prompts: first prompts of each set.
    max_new_tokens, batch_size: greedy answering; batch_size is also the judge's batch.
    judge_max_len: a preference model's input cut (its training ``seq_len``).
    num_bootstrap, seed: prompt-bootstrap resamples and their seed (also the principles').
    mesh_shape: (data, fsdp, tensor).
    injection_probe, injection_text: comparisons per set judged again with the text on
      one answer (module docstring; 0: off).
  """
  results_path = paths.join(workdir, "results.json")
  if workdir_lib.skip_if_done(workdir, "pairwise_eval"):
    return results_path
  names = list(models)
  if len(names) < 2:
    raise ValueError(f"pairwise_eval.models needs at least two models, got {names}")
  if anchor is not None and anchor not in names:
    raise ValueError(f"pairwise_eval.anchor {anchor!r} is not in models ({', '.join(names)})")
  if not helpful_principles:
    raise ValueError("pairwise_eval.helpful_principles is empty")
  _check_lines(lines, names)
  sets = {"red_team": read_prompts(workdir_lib.resolve_input(red_team_prompts))[:max_prompts],
          "helpful": read_prompts(workdir_lib.resolve_input(helpful_prompts))[:max_prompts]}
  for kind, prompts in sets.items():
    if not prompts:
      raise ValueError(f"pairwise_eval: the {kind} prompt file has no prompts")
  const = cc.load_constitution(cc.resolve_constitution_path(constitution_path))
  for name, path in models.items():   # every input checked before any work
    SavedModel.open(path, role=f"pairwise_eval.models[{name!r}]").require_kind("lm", name)
  SavedModel.open(judge, role="pairwise_eval.judge")
  mesh = build_mesh(mesh_shape)

  answers = {name: model_answers(name, path, sets, workdir, mesh_shape,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 role="pairwise_eval")
             for name, path in models.items()}
  judge_model = _judge(judge, mesh, batch_size, judge_max_len)
  if isinstance(judge_model, RewardModel):
    judge_fn = lambda kind, turns, ans: _pm_judgments(judge_model, turns, ans, kind)  # noqa: E731
  else:
    judge_fn = lambda kind, turns, ans: _feedback_judgments(  # noqa: E731
        judge_model, turns, ans, _principles(kind, len(turns), const, helpful_principles,
                                             seed), kind)
  anchor_index = None if anchor is None else names.index(anchor)
  results = {"judge": paths.absolute(judge),
             "judge_kind": "preference model" if isinstance(judge_model, RewardModel)
             else "feedback model", "models": names, "anchor": anchor,
             "lines": [list(line) for line in lines], "sets": {}}
  for kind, prompts in sets.items():
    model_rows = [answers[name][kind] for name in names]
    rows = _judgments(workdir, kind, judge_fn, prompts, model_rows, oracle)
    entry = {"axis": SETS[kind], "num_prompts": len(prompts), "num_comparisons": len(rows),
             "judge": _fit(rows, "p_a", len(names), anchor_index, num_bootstrap, seed)}
    if oracle is not None:
      entry["oracle"] = _fit(rows, "oracle_p_a", len(names), anchor_index, num_bootstrap,
                             seed)
      entry["agreement"] = _agreement(rows, entry["judge"], entry["oracle"])
    results["sets"][kind] = entry
    if injection_probe:   # every process (the judge's mesh spans them all)
      results.setdefault("injection", {})[kind] = _injection(
          judge_model, [t for _, t in prompts], model_rows, rows, num=injection_probe,
          text=injection_text, seed=seed)
    log_samples(workdir, f"pairwise/{kind}", [_decision_markdown(r, names, prompts, model_rows)
                                              for r in rows[:8]])
  results["elo"] = _by_model(names, results["sets"])
  if processes.is_chief():
    workdir_lib.write_json(results_path, results)
    pairwise_report.write(workdir, results)
  workdir_lib.mark_done(workdir, f"{len(names)} models, "
                        f"{sum(e['num_comparisons'] for e in results['sets'].values())} "
                        "comparisons\n")
  return results_path
