"""The experiment's tables: oracle metrics per model, AI labels and preference models
(figures are drawn by ``cai_jax.evaluation.plots``)."""
from __future__ import annotations

import os

import gin
import numpy as np

from cai_jax import workdir as workdir_lib
from cai_jax.evaluation import experiment_report
from cai_jax.run import program


def _fmt(v) -> str:
  if v is None or (isinstance(v, float) and np.isnan(v)):
    return "-"
  return f"{v:.3f}" if isinstance(v, float) else str(v)


def results_table(rows: list[dict]) -> str:
  """Markdown table: one row per evaluated model, then per-category breakdowns."""
  cols = ["harm_rate", "helpfulness", "evasive", "explained_refusal", "over_refusal",
          "incoherent", "judge_accuracy", "critic_accuracy"]
  fmt = _fmt
  lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for r in rows:
    lines.append(f"| {r['label']} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
  cats = list(rows[0]["categories"])
  lines += ["", "| model | " + " | ".join(
      c + (" (blind spot)" if rows[0]["categories"][c]["blind_spot"] else "") for c in cats)
      + " |", "|---" * (len(cats) + 1) + "|"]
  for r in rows:
    vals = [next(v for k, v in r["categories"][c].items() if k in ("harm_rate", "helpfulness"))
            for c in cats]
    lines.append(f"| {r['label']} | " + " | ".join(fmt(v) for v in vals) + " |")
  lines.append("")
  lines.append("Benign categories show helpfulness (higher is better); harm categories show "
               "the harm rate (lower is better).")
  return "\n".join(lines) + "\n"


def _read_json(path: str) -> dict:
  return workdir_lib.read_json(path) if os.path.exists(path) else {}


def labels_table(rl_runs: dict[str, tuple[str, str, str]]) -> str:
  """One row per label set: AI-label diagnostics, accuracy against the oracle, and the
  preference model's held-out accuracy and calibration on those labels.

  ``rl_runs``: {name: (labeling workdir, toy_label_eval workdir, toy_pm_eval workdir)}.
  """
  cols = ["pairs", "label acc. vs oracle", "blind-spot label acc.", "mean p_chosen",
          "swap flips", "(A) win rate", "length corr.", "PM held-out acc.", "PM held-out ECE",
          "PM held-out acc. vs oracle", "PM: refusal > compliance (harmful)",
          "PM: compliance > refusal (benign)"]
  lines = ["| labels | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, (label_dir, eval_dir, pm_dir) in rl_runs.items():
    diag = _read_json(os.path.join(label_dir, "diagnostics.json")).get("diagnostics", {})
    acc = _read_json(os.path.join(eval_dir, "results.json"))
    pm = _read_json(os.path.join(pm_dir, "results.json"))
    vals = [diag.get("num_ai_pairs"), acc.get("label_accuracy"),
            acc.get("label_accuracy_blind_spot"), diag.get("mean_p_chosen"),
            diag.get("swap_flip_rate"), diag.get("first_position_win_rate"),
            diag.get("length_preference_correlation"), pm.get("heldout_accuracy"),
            pm.get("heldout_ece"), pm.get("heldout_oracle_accuracy"),
            pm.get("prefers_refusal_on_harmful"), pm.get("prefers_compliance_on_benign")]
    lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in vals) + " |")
  return "\n".join(lines) + "\n"


def choices_lines(sl_dir: str = "sl_cai", dpo_dir: str = "dpo") -> list[str]:
  """The recipe's oracle-free choices, when the run made them: SL-CAI's schedule
  (``sft_until_fit``'s ``schedule.json``) and the step DPO kept (``best.json``)."""
  out = []
  sched = _read_json(os.path.join(sl_dir, "schedule.json"))
  if sched:
    tried = ", ".join(f"{t['num_steps']}: {t['prefix_match']:.3f}" for t in sched["tried"])
    out.append(f"- SL-CAI schedule: {sched['chosen_steps']} steps "
               f"({'fit' if sched['passed'] else 'threshold NOT reached'}; "
               f"threshold {sched['threshold']:.2f}; prefix match by steps tried: {tried})")
  best = _read_json(os.path.join(dpo_dir, "best.json"))
  if best:
    info = _read_json(os.path.join(dpo_dir, "model", "model.json")).get("info", {})
    out.append(f"- DPO: step {best['step']} of {info.get('num_steps', '?')} kept "
               f"(lowest {best['metric']} on held-out AI labels: {best['value']:.4f})")
  return out


@gin.configurable
@program("toy_report",
         inputs=("evals", "rl_runs"))
def toy_report(workdir: str, *, evals: tuple[str, ...] = gin.REQUIRED,
               rl_runs: dict[str, tuple[str, str, str]] | None = None,
               pairwise: str | None = None, ppo: str | None = None,
               pm_eval: str | None = None, overoptimisation: str | None = None) -> str:
  """The experiment's report page ``results.md``: the ``results.json`` of the named eval
  phases in one table (printed), the ``labels_table`` of ``rl_runs`` when given, then the
  sections of the phases named (``evaluation.experiment_report``; a phase that has not run
  is left out): the pairwise evaluation's Elo tables and Pareto plots (``pairwise``), PPO's
  training curves (``ppo``), the PM's reliability diagram (``pm_eval``) and the
  over-optimisation curve (``overoptimisation``). These folders are read, not fingerprinted
  (the report phase runs every time)."""
  rows = []
  for name in evals:
    path = os.path.join(name, "results.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"toy_report: {path} is missing; did the {name} phase run?")
    rows.append(workdir_lib.read_json(path))
  table = results_table(rows)
  if rl_runs:
    table += "\nAI labels and preference models:\n\n" + labels_table(dict(rl_runs))
  if choices := choices_lines():
    table += "\nThe recipe's oracle-free choices:\n\n" + "\n".join(choices) + "\n"
  sections = []
  if pairwise:
    sections += experiment_report.pairwise_section(workdir, pairwise)
  if ppo:
    sections += experiment_report.ppo_section(workdir, ppo)
  if pm_eval:
    sections += experiment_report.reliability_section(workdir, pm_eval)
  if overoptimisation:
    sections += experiment_report.figure_section(
        workdir, "Over-optimisation", os.path.join(overoptimisation, "overoptimisation.png"),
        "The PM's score and the oracle's utility of the policy's answers over PPO "
        "iterations.")
  page = "# Toy-world experiment\n\n## Oracle metrics per model\n\n" + table
  workdir_lib.write_text(os.path.join(workdir, "results.md"),
                         page + ("\n" + "\n".join(sections) if sections else ""))
  workdir_lib.write_json(os.path.join(workdir, "results.json"), rows, sort_keys=False)
  print("\n" + table, flush=True)
  return table
