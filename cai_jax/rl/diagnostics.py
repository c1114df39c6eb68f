"""Statistics of AI-feedback labels: position bias, order flips, length bias, confidence.

Computed by the labeling program on its pairs (``diagnostics.json`` / ``.md``) and read
by the reports; only AI-labelled rows (``source == "ai"``) count. The labeling program's
optional judge-robustness probe (``rl.injection``) adds its block under ``"injection"``;
``diagnostics_markdown`` shows such nested blocks as ``block.key`` rows.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def diagnostics(rows: Sequence[dict], *, bins: int = 10) -> dict[str, Any]:
  """Label statistics of AI-labelled rows (``source == "ai"``).

  * ``first_position_win_rate``: share of single-order judgements preferring option (A);
    0.5 for an unbiased judge on random pairs.
  * ``swap_flip_rate``: share of (pair, principle) judgements whose decision changes when
    the two answers swap places (only with ``swap_orders``).
  * ``length_preference_correlation``: Pearson correlation of the word-count difference
    (first - second answer) with ``p_first``; a length-biased judge makes it large.
  * ``label_histogram``: counts of ``p_chosen`` in ``bins`` equal bins over [0.5, 1].
  """
  ai = [r for r in rows if r["source"] == "ai"]
  if not ai:
    return {"num_ai_pairs": 0}
  p1 = np.concatenate([np.asarray(r["p_a_order1"], np.float64) for r in ai])
  p2_rows = [np.asarray(r["p_a_order2"], np.float64) for r in ai if len(r["p_a_order2"])]
  single = np.concatenate([p1] + p2_rows)   # every single-order P("(A)")
  out: dict[str, Any] = {"num_ai_pairs": len(ai),
                         "first_position_win_rate": float(np.mean(single > 0.5))}
  if p2_rows:
    p1s = np.concatenate([np.asarray(r["p_a_order1"]) for r in ai if len(r["p_a_order2"])])
    p2s = np.concatenate(p2_rows)
    # Order 1: (A) is the first answer; order 2: (A) is the second one.
    out["swap_flip_rate"] = float(np.mean((p1s > 0.5) != (p2s < 0.5)))
  first_len, second_len, p_first = [], [], []
  for r in ai:
    a, b = (r["chosen"], r["rejected"]) if r["first_is_chosen"] else (r["rejected"],
                                                                      r["chosen"])
    first_len.append(len(a.split()))
    second_len.append(len(b.split()))
    p_first.append(r["p_first"])
  diff = np.asarray(first_len, np.float64) - np.asarray(second_len, np.float64)
  out["length_preference_correlation"] = _pearson(diff, np.asarray(p_first))
  out["chosen_longer_rate"] = float(np.mean([
      (d > 0) == (r["first_is_chosen"]) for d, r in zip(diff, ai) if d != 0])) \
      if np.any(diff != 0) else float("nan")
  pc = np.asarray([r["p_chosen"] for r in ai], np.float64)
  counts, edges = np.histogram(pc, bins=bins, range=(0.5, 1.0))
  out["label_histogram"] = {"edges": [round(float(e), 3) for e in edges],
                            "counts": [int(c) for c in counts]}
  out["mean_p_chosen"] = float(np.mean(pc))
  return out


def diagnostics_markdown(diag: dict[str, Any], summary: dict[str, Any]) -> str:
  """A short human-readable report of ``diagnostics`` and the run summary."""
  fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
  lines = ["| statistic | value |", "|---|---|"]
  for k, v in list(summary.items()) + list(diag.items()):
    if isinstance(v, dict) and k != "label_histogram":   # e.g. the injection probe's block
      lines += [f"| {k}.{kk} | {fmt(vv)} |" for kk, vv in v.items()]
    elif k != "label_histogram":
      lines.append(f"| {k} | {fmt(v)} |")
  hist = diag.get("label_histogram")
  if hist:
    lines += ["", "p_chosen histogram:", ""]
    peak = max(hist["counts"]) or 1
    for lo, hi, c in zip(hist["edges"], hist["edges"][1:], hist["counts"]):
      lines.append(f"    [{lo:.2f}, {hi:.2f})  {'#' * round(40 * c / peak):<40} {c}")
  return "\n".join(lines) + "\n"
