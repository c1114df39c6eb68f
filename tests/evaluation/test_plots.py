"""The report figures: both files written atomically and valid, and the data each figure
draws (lines, error-bar extents, annotations, joined checkpoints, dropped non-finite
points); reliability bins and ECE against hand-worked numbers and the loss's ECE."""
import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from cai_jax.evaluation import plots
from cai_jax.losses import expected_calibration_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN, INF = float("nan"), float("inf")


def _check_files(paths, stem):
  assert paths == [f"{stem}.png", f"{stem}.svg"]
  with open(paths[0], "rb") as f:
    assert f.read(8) == PNG_MAGIC
  root = ET.parse(paths[1]).getroot()
  assert root.tag == "{http://www.w3.org/2000/svg}svg"
  folder = os.path.dirname(paths[0])
  assert not [n for n in os.listdir(folder) if "tmp" in n], os.listdir(folder)


def _xy(line):
  return list(map(float, line.get_xdata())), list(map(float, line.get_ydata()))


def _segments(collection):
  return [tuple(map(tuple, np.asarray(s, float))) for s in collection.get_segments()]


# line_panels


def test_line_panels_files_in_a_new_folder(tmp_path):
  stem = str(tmp_path / "new" / "deeper" / "fig")
  panels = [{"title": "a", "xlabel": "x", "ylabel": "y", "series": {"s": ([0, 1], [2, 3])}},
            {"title": "b", "xlabel": "x", "ylabel": "y", "logx": True,
             "series": {"s": ([1, 10], [2, 3])}}]
  _check_files(plots.line_panels(stem, panels, title="T"), stem)
  # rewriting over existing files works and leaves nothing behind
  _check_files(plots.line_panels(stem, panels), stem)


def test_line_panels_draw_the_series():
  panels = [{"title": "proxy", "xlabel": "it", "ylabel": "pm",
             "series": {"A": ([0, 4, 8], [0.0, 0.4, 0.8]), "B": ([0, 4], [1.0, 2.0])}},
            {"title": "truth", "xlabel": "it", "ylabel": "u", "logx": True,
             "series": {"A": ([0, 1, 10, NAN], [1.0, 2.0, 3.0, 4.0]),
                        "C": ([1, 2], [INF, NAN])}}]
  fig = plots._figure_line_panels(panels, title="T")  # pylint: disable=protected-access
  top, bottom = fig.axes
  assert [ln.get_label() for ln in top.lines] == ["A", "B"]
  assert _xy(top.lines[0]) == ([0, 4, 8], [0.0, 0.4, 0.8])
  assert _xy(top.lines[1]) == ([0, 4], [1.0, 2.0])
  assert (top.get_title(), top.get_xlabel(), top.get_ylabel()) == ("proxy", "it", "pm")
  assert [t.get_text() for t in top.get_legend().get_texts()] == ["A", "B"]
  # log axis: x <= 0 and non-finite points dropped; an all-non-finite series is not drawn
  assert bottom.get_xscale() == "log"
  (line,) = bottom.lines
  assert _xy(line) == ([1, 10], [2.0, 3.0])
  assert fig.get_suptitle() == "T"


def test_line_panels_with_no_finite_point(tmp_path):
  stem = str(tmp_path / "empty")
  _check_files(plots.line_panels(stem, [{"title": "t", "series": {"s": ([0], [NAN])}}]), stem)


# pareto_plot

POINTS = [
    {"name": "base", "helpful": -100.0, "helpful_lo": -130.0, "helpful_hi": -80.0,
     "harmless": -50.0, "harmless_lo": -60.0, "harmless_hi": -20.0},
    {"name": "SL-CAI", "helpful": 10.0, "helpful_lo": -5.0, "helpful_hi": 40.0,
     "harmless": 60.0, "harmless_lo": 30.0, "harmless_hi": 65.0},
    {"name": "PPO", "helpful": 90.0, "helpful_lo": 70.0, "helpful_hi": 95.0,
     "harmless": 120.0, "harmless_lo": NAN, "harmless_hi": 150.0},
    {"name": "broken", "helpful": NAN, "helpful_lo": 0.0, "helpful_hi": 1.0,
     "harmless": 0.0, "harmless_lo": 0.0, "harmless_hi": 1.0},
]


def test_pareto_plot_files(tmp_path):
  stem = str(tmp_path / "pareto")
  _check_files(plots.pareto_plot(stem, POINTS, lines=[("base", "SL-CAI", "PPO")]), stem)


def test_pareto_points_error_bars_and_names():
  fig = plots._figure_pareto(POINTS, title="T")  # pylint: disable=protected-access
  (ax,) = fig.axes
  assert ax.get_xlabel() == "helpfulness Elo" and ax.get_ylabel() == "harmlessness Elo"
  assert ax.get_title() == "T"
  by_name = {c.get_label(): c for c in ax.containers}
  assert sorted(by_name) == ["PPO", "SL-CAI", "base"]        # the nan point is skipped
  assert sorted(t.get_text() for t in ax.texts) == ["PPO", "SL-CAI", "base"]
  for p in POINTS[:3]:
    data_line, _, bar_cols = by_name[p["name"]].lines
    assert _xy(data_line) == ([p["helpful"]], [p["harmless"]])
    segs = [s for col in bar_cols for s in _segments(col)]
    horizontal = [s for s in segs if s[0][1] == s[1][1] and s[0][0] != s[1][0]]
    vertical = [s for s in segs if s[0][0] == s[1][0] and s[0][1] != s[1][1]]
    (h,) = horizontal
    assert sorted([h[0][0], h[1][0]]) == [p["helpful_lo"], p["helpful_hi"]]
    assert h[0][1] == p["harmless"]
    (v,) = vertical
    lo = p["harmless_lo"] if math.isfinite(p["harmless_lo"]) else p["harmless"]
    assert sorted([v[0][1], v[1][1]]) == [lo, p["harmless_hi"]]
    assert v[0][0] == p["helpful"]
  texts = {t.get_text(): t.xy for t in ax.texts}
  assert texts["SL-CAI"] == (10.0, 60.0)


def test_pareto_lines_join_checkpoints_in_order():
  fig = plots._figure_pareto(  # pylint: disable=protected-access
      POINTS, lines=[("PPO", "base", "missing", "SL-CAI"), ("base", "broken"), ("nope",)])
  (ax,) = fig.axes
  paths = [ln for ln in ax.lines if ln.get_gid() == plots.PATH_GID]
  (path,) = paths           # the second and third have fewer than two points present
  assert _xy(path) == ([90.0, -100.0, 10.0], [120.0, -50.0, 60.0])
  assert ax.get_legend() is None


# trend_plot


def test_trend_plot_means_and_error_bars(tmp_path):
  panels = [{"title": "harm", "xlabel": "params", "ylabel": "harm rate", "logx": True,
             "series": {"rl": ([1e6, 1e7, 0.0, 1e8, 1e9], [0.3, 0.2, 0.9, NAN, 0.1],
                               [0.05, None, 0.1, 0.2, NAN]),
                        "sl": ([1e6, 1e7], [0.4, 0.35], None)}},
            {"title": "help", "xlabel": "params", "ylabel": "helpfulness", "logx": False,
             "series": {"rl": ([1, 2], [0.5, 0.6], [0.1, 0.2])}}]
  stem = str(tmp_path / "trends")
  _check_files(plots.trend_plot(stem, panels), stem)
  fig = plots._figure_trend(panels)  # pylint: disable=protected-access
  ax, ax2 = fig.axes
  assert ax.get_xscale() == "log" and ax2.get_xscale() == "linear"
  rl, sl = [ln for ln in ax.lines if ln.get_label() in ("rl", "sl")]
  assert _xy(rl) == ([1e6, 1e7, 1e9], [0.3, 0.2, 0.1])       # x <= 0 and nan mean dropped
  assert _xy(sl) == ([1e6, 1e7], [0.4, 0.35])
  # one bar, at 1e6 (None and nan errors have none; sl has no errors at all)
  bars = [s for col in ax.collections for s in _segments(col)]
  assert bars == [((1e6, 0.25), (1e6, 0.35))] or bars == [((1e6, 0.35), (1e6, 0.25))]
  bars2 = sorted(s for col in ax2.collections for s in _segments(col))
  np.testing.assert_allclose(np.array(bars2), [[[1, 0.4], [1, 0.6]], [[2, 0.4], [2, 0.8]]])


# ppo_curves

PPO_ROWS = [
    {"step": 0, "probe/pm_score": 0.1, "probe/true_utility": 0.5},
    {"step": 1, "env/reward": 0.2, "env/pm_score": 0.3, "env/kl": 0.01, "kl/beta": 0.1,
     "env/response_length": 30.0, "env/refusal_rate": 0.5, "policy/loss": 1.0},
    {"step": 2, "env/reward": 0.4, "env/pm_score": 0.5, "env/kl": NAN, "kl/beta": 0.1,
     "env/response_length": 28.0, "env/refusal_rate": 0.25, "policy/loss": 0.5},
    {"step": 2, "probe/pm_score": 0.6, "probe/true_utility": 0.4},
]


def test_ppo_curves(tmp_path):
  stem = str(tmp_path / "ppo_curves")
  _check_files(plots.ppo_curves(stem, PPO_ROWS), stem)
  panels = plots.ppo_panels(PPO_ROWS)
  assert [p["title"] for p in panels] == [
      "reward (PM score - beta KL)", "PM score", "KL to the initial policy",
      "KL coefficient beta", "response length (tokens)", "refusal rate"]
  by_title = {p["title"]: p["series"] for p in panels}
  assert by_title["PM score"] == {"env/pm_score": ([1, 2], [0.3, 0.5]),
                                  "probe/pm_score": ([0, 2], [0.1, 0.6])}
  assert by_title["KL to the initial policy"] == {"env/kl": ([1], [0.01])}
  assert by_title["refusal rate"] == {"env/refusal_rate": ([1, 2], [0.5, 0.25])}
  fig = plots._figure_line_panels(panels)  # pylint: disable=protected-access
  assert len(fig.axes) == 6
  assert _xy(fig.axes[4].lines[0]) == ([1, 2], [30.0, 28.0])


def test_ppo_curves_short_names_and_no_metrics(tmp_path):
  rows = [{"step": 3, "reward": 1.0, "kl": 0.2, "length": 10, "refusal_rate": 0.0}]
  assert [list(p["series"]) for p in plots.ppo_panels(rows)] == [
      ["reward"], ["kl"], ["length"], ["refusal_rate"]]
  stem = str(tmp_path / "none")
  _check_files(plots.ppo_curves(stem, [{"step": 0, "other": 1.0}]), stem)


# reliability


def test_reliability_bins_by_hand():
  bins = plots.reliability_bins([0.05, 0.15, 0.95, 0.85], [0, 1, 1, 1], num_bins=10)
  assert len(bins) == 10
  assert [b["count"] for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
  assert [b["lo"] for b in bins] == pytest.approx([k / 10 for k in range(10)])
  assert [b["hi"] for b in bins] == pytest.approx([k / 10 for k in range(1, 11)])
  full = {k: (b["mean_prob"], b["frequency"]) for k, b in enumerate(bins) if b["count"]}
  assert full == {0: pytest.approx((0.05, 0.0)), 1: pytest.approx((0.15, 1.0)),
                  8: pytest.approx((0.85, 1.0)), 9: pytest.approx((0.95, 1.0))}
  assert all(math.isnan(b["mean_prob"]) and math.isnan(b["frequency"])
             for b in bins if not b["count"])
  # (0.05 + 0.85 + 0.15 + 0.05) / 4
  assert plots.expected_calibration_error(bins) == pytest.approx(0.275)


def test_reliability_bins_edges_soft_labels_and_non_finite():
  bins = plots.reliability_bins([0.0, 1.0, 0.5, 0.6, NAN, 0.2], [0.2, 0.9, 0.7, 0.3, 1, INF],
                                num_bins=2)
  # 0.0 -> bin 0; 1.0 clipped to the last bin; 0.5 opens bin 1; nan prob / inf label dropped
  assert [b["count"] for b in bins] == [1, 3]
  assert bins[0]["mean_prob"] == pytest.approx(0.0)
  assert bins[0]["frequency"] == pytest.approx(0.2)
  assert bins[1]["mean_prob"] == pytest.approx(0.7)
  assert bins[1]["frequency"] == pytest.approx(1.9 / 3)
  assert math.isnan(plots.expected_calibration_error(plots.reliability_bins([], [])))
  with pytest.raises(ValueError):
    plots.reliability_bins([0.1], [1, 0])


def test_ece_matches_the_loss():
  rng = np.random.default_rng(0)
  p = rng.uniform(0.01, 0.99, 500)
  t = rng.uniform(0, 1, 500)
  bins = plots.reliability_bins(p, t, num_bins=15)
  assert plots.expected_calibration_error(bins) == pytest.approx(
      float(expected_calibration_error(p, t, num_bins=15)), abs=1e-5)


def test_reliability_diagram(tmp_path):
  probs, labels = [0.05, 0.15, 0.95, 0.85, NAN], [0, 1, 1, 1, 1]
  stem = str(tmp_path / "rel")
  _check_files(plots.reliability_diagram(stem, probs, labels, title="PM"), stem)
  fig = plots._figure_reliability(probs, labels, num_bins=10,  # pylint: disable=protected-access
                                  title="PM")
  ax, ax_n = fig.axes
  (diag,) = [ln for ln in ax.lines if ln.get_gid() == plots.DIAGONAL_GID]
  assert _xy(diag) == ([0, 1], [0, 1])
  (rel,) = [ln for ln in ax.lines if ln.get_gid() == plots.RELIABILITY_GID]
  xs, ys = _xy(rel)
  np.testing.assert_allclose(xs, [0.05, 0.15, 0.85, 0.95])
  np.testing.assert_allclose(ys, [0.0, 1.0, 1.0, 1.0])
  assert ax.get_title() == "PM\nECE = 0.275 (10 bins, n = 4)"
  heights = [patch.get_height() for patch in ax_n.patches]
  assert heights == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
  centres = [patch.get_x() + patch.get_width() / 2 for patch in ax_n.patches]
  np.testing.assert_allclose(centres, np.arange(10) / 10 + 0.05)
