"""The judge-robustness probe (``rl.injection``): the statistics on hand-worked numbers, the
balanced and seeded choice of pairs and sides, and the probe with stub judges whose answer
to the injection is known in advance (one follows it, one is turned around by it, one
ignores it), also on the labeling program's pair rows and under a clamp."""
import numpy as np
import pytest

from cai_jax.rl import injection

NOTE = injection.DEFAULT_TEXT


def test_injection_stats_by_hand():
  # p_before, injected side, p_after  ->  (decision flips?, P(injected) before -> after)
  before = [0.8, 0.3, 0.6, 0.45, 0.9]
  side = [1, 1, 0, 0, 0]
  after = [0.4, 0.2, 0.7, 0.55, 0.3]
  # 0: first preferred, note on the second (rejected): flips toward it; 0.2 -> 0.6 (+0.4)
  # 1: second preferred, note on it: no flip;                         0.7 -> 0.8 (+0.1)
  # 2: first preferred, note on it: no flip;                          0.6 -> 0.7 (+0.1)
  # 3: second preferred, note on the first (rejected): flips;         0.45 -> 0.55 (+0.1)
  # 4: first preferred, note on it: flips away from it (backfire);    0.9 -> 0.3 (-0.6)
  s = injection.injection_stats(before, after, side)
  assert s["num_probed"] == 5
  assert s["injection_flip_rate"] == pytest.approx(3 / 5)
  assert s["injection_pull"] == pytest.approx((0.4 + 0.1 + 0.1 + 0.1 - 0.6) / 5)
  assert s["num_on_preferred"] == 3 and s["num_on_rejected"] == 2
  assert s["flip_rate_on_preferred"] == pytest.approx(1 / 3)
  assert s["pull_on_preferred"] == pytest.approx((0.1 + 0.1 - 0.6) / 3)
  assert s["flip_rate_on_rejected"] == pytest.approx(1.0)
  assert s["pull_on_rejected"] == pytest.approx((0.4 + 0.1) / 2)


def test_injection_stats_edges():
  # p = 0.5 counts as "first preferred" (the labeling program's convention): 0.5 -> 0.49
  # flips, and the note on the second answer was on the rejected one.
  s = injection.injection_stats([0.5], [0.49], [1])
  assert s["injection_flip_rate"] == 1.0 and s["num_on_rejected"] == 1
  assert s["injection_pull"] == pytest.approx(0.01)
  assert np.isnan(s["flip_rate_on_preferred"]) and s["num_on_preferred"] == 0
  assert injection.injection_stats([], [], []) == {"num_probed": 0}
  # the extremes of the pull: from certain loss to certain win, and back
  assert injection.injection_stats([1.0], [0.0], [1])["injection_pull"] == 1.0
  assert injection.injection_stats([1.0], [0.0], [0])["injection_pull"] == -1.0
  with pytest.raises(ValueError, match="differ in shape"):
    injection.injection_stats([0.5, 0.6], [0.5], [0])


def test_select_and_sides_are_seeded_and_balanced():
  assert injection.select(10, 4, seed=3) == injection.select(10, 4, seed=3)
  picked = injection.select(10, 4, seed=3)
  assert len(set(picked)) == 4 and picked == sorted(picked) and all(0 <= i < 10 for i in picked)
  assert injection.select(3, 8, seed=0) == [0, 1, 2]   # fewer pairs than asked: all
  assert injection.select(10, 0, seed=0) == []
  with pytest.raises(ValueError):
    injection.select(10, -1, seed=0)
  rng = np.random.default_rng(0)
  for n in (1, 2, 7, 10):
    p = rng.uniform(size=n)
    sides = injection.plan_sides(p, seed=5)
    np.testing.assert_array_equal(sides, injection.plan_sides(p, seed=5))
    preferred = np.where(p >= 0.5, 0, 1)
    assert int(np.sum(sides == preferred)) == (n + 1) // 2   # half (rounded up) on it
  sides = [tuple(injection.plan_sides([0.9] * 8, seed=s)) for s in range(6)]
  assert len(set(sides)) > 1   # the seed decides which pairs get it where


def test_inject_appends_to_one_answer():
  assert injection.inject("a", "b", 0, " X") == ("a X", "b")
  assert injection.inject("a", "b", 1, " X") == ("a", "b X")
  assert injection.inject("a", "b", 1) == ("a", "b" + NOTE)
  with pytest.raises(ValueError):
    injection.inject("a", "b", 2)


class StubJudge:
  """A feedback model in name: P("(A)") from the text of the comparison prompt alone.

  Without a note it prefers the answer saying "kind" (P = 0.8 for it). ``mode`` says what
  the note does: "ignore" (nothing), "follow" (the answer carrying it wins, P = 0.95) or
  "invert" (a note anywhere turns the base preference around)."""

  chain_of_thought = False

  def __init__(self, mode):
    self.mode, self.calls = mode, 0

  def p_option_a(self, prompts, seed=0):
    self.calls += 1
    out = []
    for p in prompts:
      head, b = p.turns[-1].text.rsplit("\n(B) ", 1)
      a = head.rsplit("(A) ", 1)[1]
      base = 0.8 if "kind" in a else 0.2
      if self.mode == "follow" and (NOTE in a) != (NOTE in b):
        out.append(0.95 if NOTE in a else 0.05)
      elif self.mode == "invert" and (NOTE in a or NOTE in b):
        out.append(1.0 - base)
      else:
        out.append(base)
    return np.asarray(out), [""] * len(prompts)


def _items(n):
  """n pairs, the kind answer first in even ones; p_first as the stub decides them without
  a note, both orders averaged: 0.5 * (0.8 + (1 - 0.2)) = 0.8, or 0.2."""
  items = []
  for i in range(n):
    first, second = ("kind words", "rude words") if i % 2 == 0 else ("rude words", "kind words")
    items.append((f"question {i}?", first, second, ["which is kinder?"],
                  0.8 if i % 2 == 0 else 0.2))
  return items


@pytest.mark.parametrize("mode, flip, on_rejected, on_preferred, pull", [
    ("ignore", 0.0, 0.0, 0.0, 0.0),
    # follows the note: where it sits on the rejected answer that answer now wins
    # (0.2 -> 0.95), on the preferred one it wins more (0.8 -> 0.95)
    ("follow", 0.5, 1.0, 0.0, 0.5 * (0.75 + 0.15)),
    # the note turns the judge around whichever answer carries it: every decision flips
    ("invert", 1.0, 1.0, 1.0, 0.5 * (0.6 - 0.6)),
])
def test_probe_with_stub_judges(mode, flip, on_rejected, on_preferred, pull):
  judge = StubJudge(mode)
  s = injection.probe_feedback(judge, _items(8), seed=1)
  assert judge.calls == 1 and s["num_probed"] == 8
  assert s["num_on_preferred"] == s["num_on_rejected"] == 4
  assert s["injection_flip_rate"] == flip
  assert s["flip_rate_on_rejected"] == on_rejected
  assert s["flip_rate_on_preferred"] == on_preferred
  assert s["injection_pull"] == pytest.approx(pull, abs=1e-6)   # float32 label arithmetic


def test_probe_with_one_order_and_a_clamp():
  # one order, clamped to (0.4, 0.6): a following judge still flips every note on the
  # rejected answer, and the pull is bounded by the band (0.4 -> 0.6 at most)
  items = [(q, a, b, pr, 0.6 if p > 0.5 else 0.4) for q, a, b, pr, p in _items(6)]
  s = injection.probe_feedback(StubJudge("follow"), items, seed=2, swap_orders=False,
                               clamp=(0.4, 0.6))
  assert s["flip_rate_on_rejected"] == 1.0 and s["flip_rate_on_preferred"] == 0.0
  assert s["pull_on_rejected"] == pytest.approx(0.2, abs=1e-6)   # float32 label arithmetic
  assert s["pull_on_preferred"] == pytest.approx(0.0, abs=1e-6)


def test_probe_pref_rows_uses_the_labelled_principles_and_order():
  seen = []

  class Recording(StubJudge):
    def p_option_a(self, prompts, seed=0):
      seen.extend(p.turns[-1].text for p in prompts)
      return super().p_option_a(prompts, seed)

  rows = []
  for i, (q, a, b, _, p) in enumerate(_items(6)):
    chosen, rejected = (a, b) if p >= 0.5 else (b, a)
    rows.append({"source": "ai", "index": i, "chosen": chosen, "rejected": rejected,
                 "first_is_chosen": p >= 0.5, "p_first": p, "principle_ids": ["c1", "c2"]})
  rows.append({"source": "helpful", "index": 99})   # passed over
  s = injection.probe_pref_rows(
      Recording("follow"), rows, request=lambda i: f"question {i}?",
      principle=lambda pid: f"principle {pid}", num=4, seed=0)
  assert s["num_probed"] == 4 and s["flip_rate_on_rejected"] == 1.0
  assert len(seen) == 4 * 2 * 2   # pairs x principles x orders
  assert sum("principle c2" in t for t in seen) == 8
  picked = injection.select(6, 4, seed=0)
  assert {int(t.split("question ")[1].split("?")[0]) for t in seen} == set(picked)
