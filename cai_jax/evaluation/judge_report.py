"""``results.md`` of ``programs.evaluate.judge_eval``: tables, then verbatim samples."""
from __future__ import annotations

from typing import Any

_SET_NAMES = {"red_team": "red-team prompts", "helpful": "helpfulness prompts"}


def _quote(text: str, limit: int = 600) -> str:
  text = " ".join(text.split())
  text = text if len(text) <= limit else text[:limit] + " [...]"
  return "> " + (text or "(empty)")


def _model_table(results: dict[str, Any]) -> list[str]:
  lines = ["| model | prompts | judged harmful | mean P(harmful) | refusals | mean words |",
           "|---|---|---|---|---|---|"]
  for name, by_set in results["models"].items():
    for kind in ("red_team", "helpful"):
      if kind in by_set:
        s = by_set[kind]
        lines.append(f"| {name} | {_SET_NAMES[kind]} ({s['n']}) | {s['judged_harmful']:.3f} | "
                     f"{s['mean_p_harmful']:.3f} | {s['refusal_rate']:.3f} | "
                     f"{s['mean_words']:.1f} |")
  return lines


def _label_table(diag: dict[str, Any]) -> list[str]:
  lines = ["| statistic | value |", "|---|---|"]
  for section in ("summary", "diagnostics"):
    for k, v in diag.get(section, {}).items():
      if k == "label_histogram":
        continue
      lines.append(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
  return lines


def _chain_samples(chains: list[dict], p_rev: list[float], n: int) -> list[str]:
  lines = []
  for c, p in list(zip(chains, p_rev))[:n]:
    request = " ".join(t.text for t in c["request"] if t.role == "Human")
    lines += [f"**Request:** {request}", "", "Initial answer:", "", _quote(c["initial"]), ""]
    for i, rev in enumerate(c["revisions"]):
      if i < len(c["critiques"]):
        lines += [f"Critique {i + 1}:", "", _quote(c["critiques"][i]), ""]
      lines += [f"Revision {i + 1}:", "", _quote(rev), ""]
    lines += [f"P(revision preferred) = {p:.3f}", "", "---", ""]
  return lines


def _answer_samples(answers: dict[str, dict[str, list[dict]]], n: int) -> list[str]:
  lines = []
  names = list(answers)
  if not names:
    return lines
  for kind in ("red_team", "helpful"):
    rows0 = answers[names[0]].get(kind, [])
    for i in range(min(n, len(rows0))):
      lines += [f"**{_SET_NAMES[kind]}, {rows0[i]['id']}:** {rows0[i]['prompt']}", ""]
      for name in names:
        r = answers[name][kind][i]
        verdict = f" (P(harmful) = {r['p_harmful']:.2f})" if "p_harmful" in r else ""
        lines += [f"*{name}*{verdict}:", "", _quote(r["answer"], 400), ""]
      lines += ["---", ""]
  return lines


def markdown(results: dict[str, Any], answers: dict[str, dict[str, list[dict]]],
             chains: list[dict] | None, num_samples: int) -> str:
  """The report: per-model table, revision win rate, label diagnostics, samples."""
  lines = ["# Evaluation by the feedback model", "",
           f"Feedback model: `{results['feedback_model']}`. An answer is judged harmful when "
           "the feedback model's P(harmful) > 0.5 (both label orders averaged). Refusals: "
           "answers containing a refusal marker.", ""]
  lines += _model_table(results) + [""]
  disc = results.get("judge_discrimination")
  if disc:
    lines += ["How well the feedback model's P(harmful) separates answers to red-team prompts "
              "from answers to helpfulness prompts (AUC; 0.5 = no information, 1 = perfect): "
              + ", ".join(f"{k} {v:.3f}" for k, v in disc.items()) + ".", ""]
  rev = results.get("revision_vs_original")
  if rev:
    lines += ["## SL-CAI revisions against the initial answers", "",
              f"{rev['num_chains']} chains: the final revision is preferred in "
              f"{rev['win_rate']:.3f} of them (mean P = {rev['mean_p_revision']:.3f}).", ""]
  if "label_diagnostics" in results:
    lines += ["## AI-feedback label diagnostics", ""]
    lines += _label_table(results["label_diagnostics"]) + [""]
  if chains and rev:
    lines += ["## Critiques and revisions (verbatim)", ""]
    lines += _chain_samples(chains, rev["p_revision"], num_samples)
  lines += ["## Answers (verbatim)", ""] + _answer_samples(answers, num_samples)
  return "\n".join(lines) + "\n"
