"""The report of a pairwise evaluation (``programs.evaluate.pairwise``): tables and plots.

``markdown(results)`` renders the Elo table (one row per model: harmlessness and helpfulness
Elo with 95% bootstrap intervals, by the judge and, when there is one, by the oracle), the
judge-oracle agreement and the judge's pairwise win rates. ``write(workdir, results)``
writes it as ``results.md`` with the Pareto plots (``pareto.*``, ``pareto_oracle.*``).
"""
from __future__ import annotations

from cai_jax import paths as path_lib
from cai_jax import workdir as workdir_lib
from cai_jax.evaluation import plots

AXES = (("red_team", "harmlessness"), ("helpful", "helpfulness"))


def _cell(fit: dict, i: int) -> str:
  return f"{fit['ratings'][i]:+.0f} [{fit['lower'][i]:+.0f}, {fit['upper'][i]:+.0f}]"


def elo_table(results: dict, source: str = "judge") -> list[str]:
  """Markdown rows: model, harmlessness Elo [95% CI], helpfulness Elo [95% CI]."""
  lines = ["| model | harmlessness Elo [95% CI] | helpfulness Elo [95% CI] |",
           "|---|---|---|"]
  for i, name in enumerate(results["models"]):
    cells = [_cell(results["sets"][kind][source], i) if source in results["sets"].get(kind, {})
             else "n/a" for kind, _ in AXES]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def agreement_table(results: dict) -> list[str]:
  """Markdown rows: per axis, the rank and linear correlation of the judge's and the
  oracle's Elo and the share of oracle-decided pairs where the judge picks the winner."""
  lines = ["| prompts | Spearman (Elo ranks) | Pearson (Elo) | pairs: judge picks the "
           "oracle's winner | pairs with an oracle winner |", "|---|---|---|---|---|"]
  for kind, axis in AXES:
    a = results["sets"][kind]["agreement"]
    lines.append(f"| {axis} | {a['spearman']:.3f} | {a['pearson']:.3f} | "
                 f"{a['pairwise_agreement']:.3f} | {a['pairs_with_oracle_winner']} of "
                 f"{a['pairs_total']} |")
  return lines


def _win_table(results: dict, kind: str) -> list[str]:
  names, wins = results["models"], results["sets"][kind]["judge"]["win_rate"]
  lines = ["| row beats column | " + " | ".join(names) + " |",
           "|---|" + "---|" * len(names)]
  for i, name in enumerate(names):
    cells = ["" if v is None else f"{v:.2f}" for v in wins[i]]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def markdown(results: dict) -> str:
  """The report page (module docstring)."""
  sets = results["sets"]
  anchor = (f"{results['anchor']} = 0" if results.get("anchor")
            else "the models' average = 0")
  out = [f"# Pairwise evaluation: Elo scores ({results['judge_kind']} as judge)", "",
         f"Judge: `{results['judge']}`. Elo from a Bradley-Terry fit on the judge's soft "
         f"outcomes ({anchor}; +400 = 10:1 odds); 95% intervals from a bootstrap over "
         "prompts. " + ", ".join(f"{kind}: {sets[kind]['num_prompts']} prompts, "
                                  f"{sets[kind]['num_comparisons']} comparisons"
                                  for kind in sets) + ".", "",
         "## By the judge", "", *elo_table(results, "judge"), ""]
  if all("oracle" in e for e in sets.values()):
    out += ["## By the oracle (ground truth)", "", *elo_table(results, "oracle"), "",
            "## Agreement of the judge with the oracle", "", *agreement_table(results), ""]
  if results.get("injection"):   # the judge-robustness probe (rl.injection)
    out += ["## Injected instruction to the judge", "", "| prompts | pairs probed | flip rate "
            "| pull toward the injected answer | flip rate, note on the rejected answer (toward "
            "it) | flip rate, note on the preferred (away) |", "|---|---|---|---|---|---|"]
    out += [f"| {axis} | {s['num_probed']} | {s['injection_flip_rate']:.3f} | "
            f"{s['injection_pull']:+.3f} | {s['flip_rate_on_rejected']:.3f} | "
            f"{s['flip_rate_on_preferred']:.3f} |" for kind, axis in AXES
            if (s := results["injection"].get(kind, {})).get("num_probed")] + [""]
  for kind, axis in AXES:
    out += [f"## Judge's win rates, {axis} prompts", "", *_win_table(results, kind), ""]
  out += ["![Pareto plot](pareto.png)", ""]
  if all("oracle" in e for e in sets.values()):
    out += ["![Pareto plot by the oracle](pareto_oracle.png)", ""]
  return "\n".join(out)


def pareto_points(results: dict, source: str = "judge") -> list[dict]:
  """One point per model: helpfulness (x) and harmlessness (y) Elo with intervals."""
  harm, helpful = results["sets"]["red_team"][source], results["sets"]["helpful"][source]
  return [{"name": name, "helpful": helpful["ratings"][i], "helpful_lo": helpful["lower"][i],
           "helpful_hi": helpful["upper"][i], "harmless": harm["ratings"][i],
           "harmless_lo": harm["lower"][i], "harmless_hi": harm["upper"][i]}
          for i, name in enumerate(results["models"])]


def write(workdir: str, results: dict) -> list[str]:
  """Writes ``results.md`` and the Pareto plots; returns the paths written."""
  paths = [path_lib.join(workdir, "results.md")]
  workdir_lib.write_text(paths[0], markdown(results))
  sources = ["judge"] + (["oracle"] if all("oracle" in e for e in results["sets"].values())
                         else [])
  for source in sources:
    stem = path_lib.join(workdir, "pareto" if source == "judge" else "pareto_oracle")
    paths += plots.pareto_plot(
        stem, pareto_points(results, source), lines=results.get("lines", ()),
        title=f"Helpfulness vs harmlessness Elo ({'judge' if source == 'judge' else 'oracle'})")
  return paths
