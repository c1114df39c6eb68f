"""Sections of an experiment's report page: Markdown with the figures embedded.

A report phase (the toy world's ``toy_report``) collects what the other phases wrote and
calls these, each returning Markdown lines (empty when its phase did not run), with figure
links relative to the report's own folder so the page renders where it lies:

* ``pairwise_section``: the Elo tables of a pairwise evaluation (``results.json`` of
  ``programs.evaluate.pairwise``), its judge-oracle agreement and its Pareto plots;
* ``ppo_section``: PPO's training curves (reward, PM score, KL, length, refusal rate),
  drawn from its ``metrics.jsonl``;
* ``reliability_section``: the preference model's reliability diagram, from the held-out
  scores a PM evaluation wrote (``heldout_scores.jsonl``: ``prob``, ``target`` per pair);
* ``figure_section``: any other figure a phase drew (e.g. the over-optimisation curve).
"""
from __future__ import annotations

import os

from cai_jax import workdir as workdir_lib
from cai_jax.evaluation import pairwise_report, plots
from cai_jax.train.metrics import read_jsonl


def _link(report_dir: str, path: str) -> str:
  return os.path.relpath(os.path.abspath(path), os.path.abspath(report_dir))


def figure_section(report_dir: str, title: str, png: str, caption: str = "") -> list[str]:
  """A heading and an embedded figure, when ``png`` exists."""
  if not os.path.exists(png):
    return []
  return [f"## {title}", "", *([caption, ""] if caption else []),
          f"![{title}]({_link(report_dir, png)})", ""]


def pairwise_section(report_dir: str, pairwise_dir: str) -> list[str]:
  """Elo tables with 95% intervals (judge, oracle), agreement and the Pareto plots."""
  path = os.path.join(pairwise_dir, "results.json")
  if not os.path.exists(path):
    return []
  res = workdir_lib.read_json(path)
  sets = res["sets"]
  out = ["## Pairwise evaluation: Elo scores", "",
         f"Judge: the {res['judge_kind']} `{res['judge']}`; Elo from a Bradley-Terry fit of "
         f"its soft outcomes ({res.get('anchor') or 'mean'} = 0), 95% intervals from a "
         "bootstrap over prompts; "
         + ", ".join(f"{k}: {v['num_prompts']} prompts" for k, v in sets.items()) + ".", "",
         "By the AI judge:", "", *pairwise_report.elo_table(res, "judge"), ""]
  has_oracle = all("oracle" in e for e in sets.values())
  if has_oracle:
    out += ["By the oracle (ground truth, evaluation only):", "",
            *pairwise_report.elo_table(res, "oracle"), "",
            "Agreement of the AI judge with the oracle:", "",
            *pairwise_report.agreement_table(res), ""]
  for stem, what in (("pareto", "AI judge"), ("pareto_oracle", "oracle")):
    png = os.path.join(pairwise_dir, stem + ".png")
    if os.path.exists(png):
      out += [f"![Pareto plot ({what})]({_link(report_dir, png)})", ""]
  return out


def ppo_section(report_dir: str, ppo_dir: str) -> list[str]:
  """PPO's training curves, drawn into the report folder."""
  path = os.path.join(ppo_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = read_jsonl(path)
  if not rows:
    return []
  png = plots.ppo_curves(os.path.join(report_dir, "ppo_curves"), rows)[0]
  return ["## PPO training curves", "", f"From `{_link(report_dir, path)}` "
          f"({len({r.get('step') for r in rows})} logged steps).", "", f"![PPO training curves]({_link(report_dir, png)})",
          ""]


def reliability_section(report_dir: str, pm_eval_dir: str, *, num_bins: int = 10) -> list[str]:
  """The preference model's reliability diagram on held-out AI-labelled pairs."""
  path = os.path.join(pm_eval_dir, "heldout_scores.jsonl")
  if not os.path.exists(path):
    return []
  rows = read_jsonl(path)
  if not rows:
    return []
  probs, targets = [r["prob"] for r in rows], [r["target"] for r in rows]
  png = plots.reliability_diagram(os.path.join(report_dir, "pm_reliability"), probs, targets,
                                  num_bins=num_bins,
                                  title="Preference model on held-out AI labels")[0]
  return ["## Preference model calibration", "",
          f"sigmoid(r_chosen - r_rejected) against the soft AI label, {len(rows)} held-out "
          "pairs.", "", f"![PM reliability diagram]({_link(report_dir, png)})", ""]
