"""The experiment's tables: oracle metrics per model, AI labels and preference models,
and a small dependency-free SVG line chart."""
from __future__ import annotations

import os

import gin
import numpy as np

from cai_jax import workdir as workdir_lib
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
               rl_runs: dict[str, tuple[str, str, str]] | None = None) -> str:
  """Collects the ``results.json`` of the named eval phases into one table (printed),
  plus the ``labels_table`` of ``rl_runs`` when given."""
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
  workdir_lib.write_text(os.path.join(workdir, "results.md"), table)
  workdir_lib.write_json(os.path.join(workdir, "results.json"), rows, sort_keys=False)
  print("\n" + table, flush=True)
  return table


def svg_chart(path: str, panels: list[dict], *, width: int = 860,
              panel_height: int = 220) -> None:
  """Writes stacked line charts as one SVG (no plotting library needed).

  ``panels``: dicts with ``title``, ``xlabel`` and ``series``: {name: (xs, ys)}.
  """
  colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
  left, right, top, bottom = 60, 250, 28, 36
  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
         f'height="{panel_height * len(panels)}" font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{panel_height * len(panels)}" fill="white"/>']
  for k, panel in enumerate(panels):
    out += _svg_panel(panel, k * panel_height, width, panel_height, colors,
                      (left, right, top, bottom))
  out.append("</svg>")
  workdir_lib.write_text(path, "\n".join(out) + "\n")


def _svg_panel(panel: dict, y0: float, width: int, panel_height: int, colors: list[str],
               margins: tuple[int, int, int, int]) -> list[str]:
  """The SVG elements of one panel of ``svg_chart``."""
  left, right, top, bottom = margins
  xs_all = [x for xs, _ in panel["series"].values() for x in xs]
  ys_all = [y for _, ys in panel["series"].values() for y in ys if np.isfinite(y)]
  if not xs_all or not ys_all:
    return []
  x_lo, x_hi = min(xs_all), max(xs_all) if max(xs_all) > min(xs_all) else min(xs_all) + 1
  y_lo, y_hi = min(ys_all), max(ys_all)
  if y_hi - y_lo < 1e-9:
    y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
  pw, ph = width - left - right, panel_height - top - bottom
  sx = lambda x: left + (x - x_lo) / (x_hi - x_lo) * pw  # noqa: E731
  sy = lambda y: y0 + top + (1 - (y - y_lo) / (y_hi - y_lo)) * ph  # noqa: E731
  out = [f'<text x="{left}" y="{y0 + 16}" font-weight="bold">{panel["title"]}</text>',
         f'<rect x="{left}" y="{y0 + top}" width="{pw}" height="{ph}" fill="none" '
         'stroke="#999"/>']
  for frac in (0.0, 0.5, 1.0):
    yv = y_lo + frac * (y_hi - y_lo)
    out.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    xv = x_lo + frac * (x_hi - x_lo)
    out.append(f'<text x="{sx(xv):.1f}" y="{y0 + top + ph + 14}" '
               f'text-anchor="middle">{xv:.3g}</text>')
  out.append(f'<text x="{left + pw / 2}" y="{y0 + panel_height - 6}" '
             f'text-anchor="middle">{panel.get("xlabel", "")}</text>')
  for j, (name, (xs, ys)) in enumerate(panel["series"].items()):
    c = colors[j % len(colors)]
    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if np.isfinite(y))
    out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
    out.append(f'<text x="{left + pw + 10}" y="{y0 + top + 14 + 16 * j}" fill="{c}">'
               f'{name}</text>')
  return out
