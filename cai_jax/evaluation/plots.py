"""Figures of the reports, drawn with matplotlib (Agg, no pyplot state).

Every public function draws one figure and saves it twice, as ``stem + ".png"`` (for
Markdown pages) and ``stem + ".svg"`` (vector, for papers), each written atomically
(``paths.write_atomic``; ``stem`` may be a ``gs://`` URL); it returns ``[png, svg]``. The
parent folder is created when missing. Points that are not finite (nan, inf) are left
out, never an error.

* ``line_panels``: stacked line charts (e.g. over-optimisation: proxy vs truth);
* ``pareto_plot``: helpfulness vs harmlessness Elo with 95% intervals, as in Figure 2 of
  the Constitutional AI paper (Bai et al., 2022), checkpoints joined in training order;
* ``trend_plot``: means with error bars against a swept quantity (a sweep's trends);
* ``ppo_curves``: PPO's training curves from its ``metrics.jsonl`` rows;
* ``reliability_diagram`` (and ``reliability_bins``): calibration of predicted
  probabilities, with the same binning and ECE as
  ``cai_jax.losses.expected_calibration_error``.

Each public function builds its figure with a ``_figure_*`` function (which tests inspect)
and saves it with ``_save``.
"""
from __future__ import annotations

import io
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cai_jax import paths as path_lib

FORMATS = ("png", "svg")
PATH_GID = "path"            # gid of the lines joining checkpoints in ``pareto_plot``
DIAGONAL_GID = "diagonal"    # gid of the perfect-calibration line
RELIABILITY_GID = "reliability"

# PPO metrics (as ``cai_jax.rl.ppo`` and ``programs.rl_cai.ppo`` log them, plus short
# aliases): (panel title, the keys drawn in it as series, when present).
PPO_METRICS = (
    ("reward (PM score - beta KL)", ("env/reward", "reward")),
    ("PM score", ("env/pm_score", "pm_score", "probe/pm_score")),
    ("KL to the initial policy", ("env/kl", "kl")),
    ("KL coefficient beta", ("kl/beta",)),
    ("response length (tokens)", ("env/response_length", "response_length", "length")),
    ("refusal rate", ("env/refusal_rate", "refusal_rate")),
    ("truncated rate", ("env/truncated_rate", "truncated_rate")),
    ("policy entropy", ("policy/entropy",)),
)


def _finite(*values: Any) -> bool:
  """True when every value is a real, finite number (None and strings are not)."""
  for v in values:
    try:
      if not math.isfinite(float(v)):
        return False
    except (TypeError, ValueError):
      return False
  return True


def _save(fig: Figure, stem: str) -> list[str]:
  """Writes ``fig`` as ``stem.png`` and ``stem.svg`` all-or-nothing (``paths.write_atomic``;
  ``stem`` may be a URL); returns both paths."""
  stem = os.fspath(stem)
  FigureCanvasAgg(fig)
  out = []
  for fmt in FORMATS:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
    path_lib.write_atomic(f"{stem}.{fmt}", buf.getvalue())
    out.append(f"{stem}.{fmt}")
  return out


def _stack(n: int, *, height: float = 2.8, width: float = 8.0) -> tuple[Figure, list]:
  """A figure of ``n`` (at least one) axes stacked vertically."""
  fig = Figure(figsize=(width, 0.6 + height * max(n, 1)), layout="constrained")
  axes = fig.subplots(max(n, 1), 1, squeeze=False)[:, 0]
  return fig, list(axes)


def _points(xs: Sequence, ys: Sequence, *, logx: bool = False) -> tuple[list, list]:
  """The (x, y) pairs with both finite (and x > 0 on a log axis), as two lists."""
  keep = [(float(x), float(y)) for x, y in zip(xs, ys)
          if _finite(x, y) and (not logx or float(x) > 0)]
  return [p[0] for p in keep], [p[1] for p in keep]


def _label_axes(ax, panel: Mapping) -> None:
  ax.set_title(panel.get("title", ""), fontsize="medium")
  ax.set_xlabel(panel.get("xlabel", ""))
  ax.set_ylabel(panel.get("ylabel", ""))
  ax.grid(True, alpha=0.3)


def _no_data(ax) -> None:
  ax.text(0.5, 0.5, "no finite data", ha="center", va="center", transform=ax.transAxes,
          color="gray")


def _figure_line_panels(panels: Sequence[Mapping], *, title: str | None = None) -> Figure:
  fig, axes = _stack(len(panels))
  for ax, panel in zip(axes, panels):
    logx = bool(panel.get("logx", False))
    drawn, whole = 0, True
    for name, (xs, ys) in panel.get("series", {}).items():
      px, py = _points(xs, ys, logx=logx)
      if px:
        ax.plot(px, py, marker="o", markersize=3, label=str(name))
        drawn += 1
        whole = whole and all(x.is_integer() for x in px)
    if logx:
      ax.set_xscale("log")
    elif drawn and whole:   # steps, iterations: no fractional ticks
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _label_axes(ax, panel)
    if drawn:
      ax.legend(fontsize="small", loc="best")
    else:
      _no_data(ax)
  if title:
    fig.suptitle(title)
  return fig


def line_panels(stem: str, panels: Sequence[Mapping], *, title: str | None = None
                ) -> list[str]:
  """Stacked line charts, one per panel.

  Args:
    stem: output path without extension.
    panels: dicts with ``title``, ``xlabel``, ``ylabel``, optional ``logx`` and
      ``series``: {name: (xs, ys)}.
    title: the figure's title.
  """
  return _save(_figure_line_panels(panels, title=title), stem)


def _error(value: float, lo: Any, hi: Any) -> tuple[float, float]:
  """(below, above) error-bar lengths from interval bounds; 0 where a bound is missing."""
  below = value - float(lo) if _finite(lo) else 0.0
  above = float(hi) - value if _finite(hi) else 0.0
  return max(below, 0.0), max(above, 0.0)


def _figure_pareto(points: Sequence[Mapping], *, lines: Iterable[Sequence[str]] = (),
                   title: str = "") -> Figure:
  fig = Figure(figsize=(7.0, 6.0), layout="constrained")
  ax = fig.subplots()
  at = {}
  for p in points:
    x, y = p["helpful"], p["harmless"]
    if not _finite(x, y):
      continue
    x, y = float(x), float(y)
    at[p["name"]] = (x, y)
    xe, ye = _error(x, p.get("helpful_lo"), p.get("helpful_hi")), _error(
        y, p.get("harmless_lo"), p.get("harmless_hi"))
    ax.errorbar([x], [y], xerr=[[xe[0]], [xe[1]]], yerr=[[ye[0]], [ye[1]]], fmt="o",
                capsize=3, label=str(p["name"]), zorder=3)
    ax.annotate(str(p["name"]), (x, y), xytext=(5, 5), textcoords="offset points",
                fontsize="small")
  for names in lines:
    path = [at[n] for n in names if n in at]
    if len(path) >= 2:
      ax.plot([q[0] for q in path], [q[1] for q in path], "-", color="gray", alpha=0.7,
              zorder=2, gid=PATH_GID, label="_" + " > ".join(n for n in names if n in at))
  ax.set_xlabel("helpfulness Elo")
  ax.set_ylabel("harmlessness Elo")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if not at:
    _no_data(ax)
  return fig


def pareto_plot(stem: str, points: Sequence[Mapping], *, lines: Iterable[Sequence[str]] = (),
                title: str = "Helpfulness vs harmlessness Elo") -> list[str]:
  """Harmlessness Elo (y) against helpfulness Elo (x), one point per model.

  Args:
    stem: output path without extension.
    points: dicts with ``name``, ``helpful``, ``helpful_lo``, ``helpful_hi``,
      ``harmless``, ``harmless_lo``, ``harmless_hi`` (Elo and 95% interval bounds);
      drawn with asymmetric error bars in both axes and annotated with the name.
    lines: sequences of model names joined in that order (training checkpoints, e.g.
      ``("base", "SL-CAI", "PPO")``); names without a point are skipped.
    title: the figure's title.
  """
  return _save(_figure_pareto(points, lines=lines, title=title), stem)


def _figure_trend(panels: Sequence[Mapping]) -> Figure:
  fig, axes = _stack(len(panels))
  for ax, panel in zip(axes, panels):
    logx = bool(panel.get("logx", False))
    drawn = 0
    for name, (xs, means, errs) in panel.get("series", {}).items():
      errs = [None] * len(xs) if errs is None else list(errs)
      keep = [(float(x), float(m), e) for x, m, e in zip(xs, means, errs)
              if _finite(x, m) and (not logx or float(x) > 0)]
      if not keep:
        continue
      (line,) = ax.plot([k[0] for k in keep], [k[1] for k in keep], marker="o",
                        markersize=4, label=str(name))
      bars = [(x, m, abs(float(e))) for x, m, e in keep if _finite(e)]
      if bars:
        ax.errorbar([b[0] for b in bars], [b[1] for b in bars], yerr=[b[2] for b in bars],
                    fmt="none", ecolor=line.get_color(), capsize=3)
      drawn += 1
    if logx:
      ax.set_xscale("log")
    _label_axes(ax, panel)
    if drawn:
      ax.legend(fontsize="small", loc="best")
    else:
      _no_data(ax)
  return fig


def trend_plot(stem: str, panels: Sequence[Mapping]) -> list[str]:
  """Means with error bars against a swept quantity, one panel per metric.

  Args:
    stem: output path without extension.
    panels: dicts with ``title``, ``xlabel``, ``ylabel``, ``logx`` and ``series``:
      {name: (xs, means, errs)}; ``errs`` (e.g. standard deviations) may be None, or
      hold None or nan where a point has no error bar.
  """
  return _save(_figure_trend(panels), stem)


def ppo_panels(rows: Sequence[Mapping]) -> list[dict]:
  """``line_panels`` panels of PPO's metrics: one per entry of ``PPO_METRICS`` with data,
  a series per key present, x = the rows' ``step``."""
  panels = []
  for title, keys in PPO_METRICS:
    series = {}
    for key in keys:
      pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
      xs, ys = _points([p[0] for p in pts], [p[1] for p in pts])
      if xs:
        series[key] = (xs, ys)
    if series:
      panels.append({"title": title, "xlabel": "PPO iteration", "ylabel": title.split(" (")[0],
                     "series": series})
  return panels


def ppo_curves(stem: str, rows: Sequence[Mapping]) -> list[str]:
  """PPO's training curves from ``metrics.jsonl`` rows (``step`` and the metrics
  ``cai_jax.rl.ppo`` logs: ``env/reward``, ``env/pm_score``, ``env/kl``, ``kl/beta``,
  ``env/response_length``, ``env/refusal_rate``, ...; ``probe/pm_score`` too): one panel
  per metric present."""
  panels = ppo_panels(rows) or [{"title": "no PPO metrics", "series": {}}]
  return _save(_figure_line_panels(panels, title="PPO training curves"), stem)


def reliability_bins(probs: Sequence[float], labels: Sequence[float], num_bins: int = 10
                     ) -> list[dict]:
  """Equal-width bins over [0, 1] of the predicted probabilities (bin ``floor(p * n)``,
  clipped to the last, as ``cai_jax.losses.expected_calibration_error``).

  Labels may be soft (in [0, 1]): a bin's ``frequency`` is its mean label. Pairs with a
  non-finite probability or label are dropped.

  Returns:
    ``num_bins`` dicts {lo, hi, count, mean_prob, frequency}; an empty bin has count 0
    and nan means.
  """
  if num_bins < 1:
    raise ValueError(f"reliability_bins: num_bins must be >= 1, got {num_bins}")
  p = np.asarray(probs, np.float64).reshape(-1)
  t = np.asarray(labels, np.float64).reshape(-1)
  if p.shape != t.shape:
    raise ValueError(f"reliability_bins: {p.size} probabilities but {t.size} labels")
  keep = np.isfinite(p) & np.isfinite(t)
  p, t = p[keep], t[keep]
  idx = np.clip(np.floor(p * num_bins).astype(np.int64), 0, num_bins - 1)
  out = []
  for b in range(num_bins):
    sel = idx == b
    n = int(sel.sum())
    out.append({"lo": b / num_bins, "hi": (b + 1) / num_bins, "count": n,
                "mean_prob": float(p[sel].mean()) if n else float("nan"),
                "frequency": float(t[sel].mean()) if n else float("nan")})
  return out


def expected_calibration_error(bins: Sequence[Mapping]) -> float:
  """ECE of ``reliability_bins``: ``sum_b (n_b / N) |mean_prob_b - frequency_b|`` (nan
  when every bin is empty)."""
  total = sum(b["count"] for b in bins)
  if not total:
    return float("nan")
  return float(sum(b["count"] * abs(b["mean_prob"] - b["frequency"])
                   for b in bins if b["count"]) / total)


def _figure_reliability(probs: Sequence[float], labels: Sequence[float], *, num_bins: int,
                        title: str) -> Figure:
  bins = reliability_bins(probs, labels, num_bins)
  ece = expected_calibration_error(bins)
  n = sum(b["count"] for b in bins)
  fig = Figure(figsize=(6.0, 7.0), layout="constrained")
  ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  ax.plot([0, 1], [0, 1], "--", color="gray", gid=DIAGONAL_GID, label="perfect calibration")
  full = [b for b in bins if b["count"]]
  ax.plot([b["mean_prob"] for b in full], [b["frequency"] for b in full], "o-",
          gid=RELIABILITY_GID, label="observed")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel("observed frequency (mean label)")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="upper left", fontsize="small")
  ax.set_title(f"{title}\nECE = {ece:.3f} ({num_bins} bins, n = {n})", fontsize="medium")
  ax_n.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["count"] for b in bins],
           width=1.0 / num_bins, color="tab:blue", alpha=0.5, edgecolor="white")
  ax_n.set_xlabel("mean predicted probability")
  ax_n.set_ylabel("count")
  return fig


def reliability_diagram(stem: str, probs: Sequence[float], labels: Sequence[float], *,
                        num_bins: int = 10, title: str = "Reliability diagram") -> list[str]:
  """The calibration plot: observed frequency against mean predicted probability per bin
  (``reliability_bins``), the diagonal, the bin counts below, and the expected
  calibration error in the title."""
  return _save(_figure_reliability(probs, labels, num_bins=num_bins, title=title), stem)
