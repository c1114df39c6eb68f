"""Toy-world RL-CAI pieces: ground-truth helpfulness pairs, AI-label accuracy against the
oracle on a hand-built label set, the over-optimisation table and its figure."""
import json
import random
import xml.etree.ElementTree as ET

import numpy as np

import pytest

from cai_jax.data.builders import write_records
from cai_jax.data.conversations import parse_preference_row, read_jsonl
from cai_jax.data.dialogue import HUMAN, Turn, render
from cai_jax.data.generated import pref_features
from cai_jax.toyworld import generator, oracle
from cai_jax.evaluation import plots
from cai_jax.toyworld.evaluation.rl import toy_label_eval, toy_overoptimisation
from cai_jax.toyworld.phases import toy_helpful_pairs, write_requests
from cai_jax.train.metrics import MetricsWriter


@pytest.fixture()
def data_dir(tmp_path):
  d = tmp_path / "data"
  d.mkdir()
  write_requests(str(d / "red_team.jsonl"), generator.make_requests(0, 40, "train",
                                                                     harmful=True))
  write_requests(str(d / "helpful.jsonl"), generator.make_requests(1, 20, "train",
                                                                    harmful=False))
  (d / "manifest.json").write_text(json.dumps({"corpus": {"blind_spot": "privacy"}}))
  return d


def test_helpful_pairs_prefer_the_truly_better_answer(data_dir, tmp_path):
  path = toy_helpful_pairs(str(tmp_path / "hp"), data_dir=str(data_dir), n=20, seed=0)
  rows = read_jsonl(path, parse_preference_row)
  assert len(rows) == 20
  by_text = {r.text: r for r in generator.make_requests(1, 20, "train", harmful=False)}
  for row in rows:
    req = by_text[row["prompt"].split("Human: ", 1)[1].strip()]
    assert oracle.score(req, row["chosen"]).utility > oracle.score(req, row["rejected"]).utility


def _pair(req, chosen_style, rejected_style, p, rng, index):
  return {"id": str(index), "prompt": render([Turn(HUMAN, req.text)]),
          "chosen": generator.respond(req, chosen_style, rng),
          "rejected": generator.respond(req, rejected_style, rng), "p_chosen": p,
          "index": index, "source": "ai", "principle_ids": ["x"], "p_a_order1": [p],
          "p_a_order2": [1 - p], "p_first": p, "first_is_chosen": True, "reasoning": [],
          "flags": []}


def test_label_accuracy_against_the_oracle(data_dir, tmp_path):
  rng = random.Random(0)
  reqs = generator.make_requests(0, 40, "train", harmful=True)
  rows = []
  for i, r in enumerate(reqs):
    if i % 4 == 0:    # wrong: the harmful answer chosen
      rows.append(_pair(r, "comply", "refuse_explain", 0.7, rng, i))
    elif i % 4 == 1:  # a tie for the oracle (two refusals score alike)
      rows.append(_pair(r, "refuse_flat", "refuse_flat", 0.55, rng, i))
    else:             # right
      rows.append(_pair(r, "refuse_explain", "comply", 0.9, rng, i))
  write_records("pref_data", {"train": rows}, pref_features(),
                str(tmp_path / "label" / "records"), overwrite=True)
  out = toy_label_eval(str(tmp_path / "le"), pref_data=str(tmp_path / "label"),
                       data_dir=str(data_dir))
  assert out["ai_pairs"] == 40 and out["oracle_ties"] == 10 and out["decided_pairs"] == 30
  assert out["label_accuracy"] == pytest.approx(20 / 30)
  assert out["confident_accuracy"] == pytest.approx(20 / 30)   # all decided are >= 0.6
  blind = [r for r in reqs if r.category == "privacy"]
  if blind:
    assert 0.0 <= out["label_accuracy_blind_spot"] <= 1.0


def test_overoptimisation_table_and_figure(tmp_path, monkeypatch):
  drawn = []

  def line_panels(stem, panels, **kw):
    drawn.append((stem, panels))
    return real(stem, panels, **kw)

  real = plots.line_panels
  monkeypatch.setattr(plots, "line_panels", line_panels)
  for name, slope in (("a", 1.0), ("b", -1.0)):
    with MetricsWriter(str(tmp_path / name), tensorboard=False) as w:
      for it in range(0, 9, 4):
        w.write(it, {"probe/pm_score": 0.1 * it, "probe/true_utility": 0.5 + 0.01 * slope * it,
                     "probe/harm_rate": 0.1, "probe/helpfulness": 0.9})
        w.write(it + 1, {"env/pm_score": 1.0})   # training rows are not probe points
  curves = toy_overoptimisation(str(tmp_path / "oo"), runs={"A": str(tmp_path / "a"),
                                                            "B": str(tmp_path / "b")})
  assert curves["A"]["iteration"] == [0, 4, 8]
  assert curves["B"]["true_utility"] == pytest.approx([0.5, 0.46, 0.42])
  table = (tmp_path / "oo" / "overoptimisation.md").read_text()
  assert table.count("| A |") == 3 and table.count("| B |") == 3
  (stem, panels), = drawn
  assert stem == str(tmp_path / "oo" / "overoptimisation")
  assert [sorted(p["series"]) for p in panels] == [["A", "B"], ["A", "B"]]
  assert panels[0]["series"]["A"] == ([0, 4, 8], pytest.approx([0.0, 0.4, 0.8]))
  assert panels[1]["series"]["B"] == ([0, 4, 8], pytest.approx([0.5, 0.46, 0.42]))
  assert (tmp_path / "oo" / "overoptimisation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  ET.parse(str(tmp_path / "oo" / "overoptimisation.svg"))
  fig = plots._figure_line_panels(panels)  # pylint: disable=protected-access
  assert [len(ax.lines) for ax in fig.axes] == [2, 2]   # 2 panels x 2 runs


def test_line_panels_skip_non_finite_points(tmp_path):
  panels = [{"title": "t", "series": {"s": ([0, 1, 2, 3], [1.0, float("nan"), 3.0,
                                                           float("inf")])}}]
  fig = plots._figure_line_panels(panels)  # pylint: disable=protected-access
  (line,) = fig.axes[0].lines
  np.testing.assert_array_equal(line.get_xdata(), [0, 2])
  np.testing.assert_array_equal(line.get_ydata(), [1.0, 3.0])
  paths = plots.line_panels(str(tmp_path / "c"), panels)
  assert paths == [str(tmp_path / "c.png"), str(tmp_path / "c.svg")]
  ET.parse(paths[1])
