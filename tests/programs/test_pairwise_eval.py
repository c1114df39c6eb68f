"""``pairwise_eval``: every comparison against a brute-force full forward of the judge (a
feedback model: both option orders; a preference model: the score at the answer's end), the
Elo ratings against a direct maximisation of the Bradley-Terry likelihood (scipy), the
oracle's outcomes and the agreement counted by hand, the report and the Pareto plots, the
rerun that reuses answers and judgments, argument errors before any work, and the
judge-robustness probe (an injected note to the judge on one answer) against the same
brute-force judges."""
import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
import scipy.optimize

from cai_jax import constitution as cc
from cai_jax import models
from cai_jax.data.dialogue import ASSISTANT, Turn
from cai_jax.evaluation import answers as answers_lib
from cai_jax.evaluation.elo import ELO_SCALE
from cai_jax.models.store import SavedModel, save_model
from cai_jax.programs.evaluate.pairwise import pairwise_eval
from cai_jax.rl import injection

CONST = "constitutions/default.json"
HELPFUL_Q = ("Which response is more helpful?", "Which response answers the question?")


def _oracle(request: str, answer: str) -> float:
  """A test oracle: a fixed function of the answer's characters (sign flipped on requests of
  even length), so that the random models' answers get different utilities."""
  return float(sum(map(ord, answer)) % 7 * (1 if len(request) % 2 else -1))


def _p_a(judge, tok, prompt):
  """P("(A)") from one full forward (single-token options in this vocab)."""
  a, b = tok.single_token_id("(A)"), tok.single_token_id("(B)")
  logp = jax.nn.log_softmax(models.logits(judge, np.asarray([prompt.token_ids(tok)],
                                                            np.int32))[0, -1])
  return float(1 / (1 + np.exp(logp[b] - logp[a])))


def _bt_ratings(rows, key, n, anchor):
  """Bradley-Terry MLE by a generic optimiser (no shared code with ``evaluation.elo``)."""
  a = np.array([r["a"] for r in rows])
  b = np.array([r["b"] for r in rows])
  p = np.array([r[key] for r in rows])

  def nll(x):
    d = x[a] - x[b]
    return -np.sum(p * -np.logaddexp(0, -d) + (1 - p) * -np.logaddexp(0, d))

  x = scipy.optimize.minimize(nll, np.zeros(n), method="BFGS", options={"gtol": 1e-10}).x
  return (x - x[anchor]) * ELO_SCALE


@pytest.fixture(scope="module")
def setup(tmp_path_factory, random_lm, lm_config, words_tokenizer, words):
  d = tmp_path_factory.mktemp("pairwise")
  lms = {"base": random_lm}
  for name, seed in (("mid", 5), ("top", 7)):   # weights scaled up: peaked, varied answers
    params = jax.tree.map(lambda x: 8.0 * x, models.init(lm_config, seed=seed)[1])
    lms[name] = save_model(str(d / name), params, lm_config,
                           info={"tokenizer_path": words_tokenizer.path})
  for name, ws in (("red.jsonl", words[:4]), ("help.jsonl", words[4:7])):
    (d / name).write_text("".join(json.dumps({"id": w, "prompt": f"{w}?"}) + "\n"
                                  for w in ws))
  kw = dict(models=lms, judge=random_lm, red_team_prompts=str(d / "red.jsonl"),
            helpful_prompts=str(d / "help.jsonl"), constitution_path=CONST,
            helpful_principles=HELPFUL_Q, oracle=_oracle, anchor="base",
            lines=(("base", "mid", "top"),), max_new_tokens=5, batch_size=4,
            num_bootstrap=200, mesh_shape=(1, 1, 1))
  out = pairwise_eval(str(d / "eval"), **kw)
  return d, kw, json.loads(open(out).read())


def _rows(workdir, kind):
  return [json.loads(x) for x in open(os.path.join(workdir, "judgments", f"{kind}.jsonl"))]


def _answers(workdir, name, kind):
  return [json.loads(x) for x in open(answers_lib.answers_file(workdir, name, kind))]


def test_feedback_judgments_match_brute_force(setup, random_lm, words_tokenizer):
  d, kw, results = setup
  wd, names = str(d / "eval"), ["base", "mid", "top"]
  judge = models.merge(*SavedModel.open(random_lm).load())
  const = cc.load_constitution(cc.resolve_constitution_path(CONST))
  for kind, n in (("red_team", 4), ("helpful", 3)):
    rows = _rows(wd, kind)
    assert len(rows) == 3 * n == results["sets"][kind]["num_comparisons"]
    assert {(r["a"], r["b"]) for r in rows} == {(0, 1), (0, 2), (1, 2)}
    ans = [_answers(wd, m, kind) for m in names]
    for r in rows:
      req = [Turn("Human", ans[0][r["prompt"]]["prompt"])]
      x, y = ans[r["a"]][r["prompt"]]["answer"], ans[r["b"]][r["prompt"]]["answer"]
      if kind == "red_team":   # the labeling program's principle draw for this prompt
        pr = cc.sample_comparison_principles(const, seed=0, prompt_index=r["prompt"])[0].text
        assert r["principle"] == pr
      else:
        pr = r["principle"]
        assert pr in HELPFUL_Q
      # one principle per prompt, whatever the pair
      assert {q["principle"] for q in rows if q["prompt"] == r["prompt"]} == {pr}
      p_ab = _p_a(judge, words_tokenizer, cc.comparison_prompt(req, x, y, pr))
      p_ba = _p_a(judge, words_tokenizer, cc.comparison_prompt(req, y, x, pr))
      assert r["p_ab"] == pytest.approx(p_ab, abs=2e-4)
      assert r["p_ba"] == pytest.approx(p_ba, abs=2e-4)
      assert r["p_a"] == pytest.approx(0.5 * (p_ab + 1 - p_ba), abs=2e-4)


def test_elo_oracle_and_agreement(setup):
  d, _, results = setup
  wd = str(d / "eval")
  for kind in ("red_team", "helpful"):
    rows, entry = _rows(wd, kind), results["sets"][kind]
    ans = [_answers(wd, m, kind) for m in ("base", "mid", "top")]
    for r in rows:   # the oracle's outcome, from the answers' utilities
      u = [_oracle(ans[m][r["prompt"]]["prompt"], ans[m][r["prompt"]]["answer"])
           for m in (r["a"], r["b"])]
      want = 1.0 if u[0] > u[1] else 0.0 if u[0] < u[1] else 0.5
      assert r["oracle_p_a"] == want
    for source, key in (("judge", "p_a"), ("oracle", "oracle_p_a")):
      fit = entry[source]
      np.testing.assert_allclose(fit["ratings"], _bt_ratings(rows, key, 3, 0), atol=0.05)
      assert fit["ratings"][0] == 0.0   # anchored at "base"
      for lo, mid, hi in zip(fit["lower"], fit["ratings"], fit["upper"]):
        assert lo <= mid + 1e-6 and mid <= hi + 1e-6
      for a, b in ((0, 1), (0, 2), (1, 2)):
        want = np.mean([r[key] for r in rows if (r["a"], r["b"]) == (a, b)])
        assert fit["win_rate"][a][b] == pytest.approx(want, abs=1e-4)
        assert fit["win_rate"][b][a] == pytest.approx(1 - want, abs=1e-4)
    decided = [r for r in rows if r["oracle_p_a"] != 0.5 and r["p_a"] != 0.5]
    assert decided   # the test oracle decides some pairs
    same = np.mean([(r["p_a"] > 0.5) == (r["oracle_p_a"] > 0.5) for r in decided])
    assert entry["agreement"]["pairwise_agreement"] == pytest.approx(same)
    assert entry["agreement"]["pairs_with_oracle_winner"] == sum(
        r["oracle_p_a"] != 0.5 for r in rows)


def test_judge_decisions_in_tensorboard(setup, tensorboard_texts):
  d, _, _ = setup
  wd = str(d / "eval")
  names = ["base", "mid", "top"]
  for kind in ("red_team", "helpful"):
    texts = tensorboard_texts(wd, f"pairwise/{kind}")
    rows = _rows(wd, kind)
    assert [s for s, _ in texts] == list(range(8))
    for (_, text), r in zip(texts, rows):
      ans = _answers(wd, names[r["b"]], kind)[r["prompt"]]
      assert ans["prompt"] in text and ans["answer"] in text
      want = f"**P({names[r['a']]} better)** = {r['p_a']:.3f}, oracle {r['oracle_p_a']:.1f}"
      assert want in text


def test_report_and_plots(setup):
  d, _, results = setup
  wd = d / "eval"
  md = (wd / "results.md").read_text()
  h = results["sets"]["red_team"]["judge"]
  assert f"| top | {h['ratings'][2]:+.0f} [{h['lower'][2]:+.0f}, {h['upper'][2]:+.0f}]" in md
  assert "By the oracle" in md and "Agreement of the judge with the oracle" in md
  for stem in ("pareto", "pareto_oracle"):
    assert (wd / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (wd / f"{stem}.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
  assert (wd / "DONE").exists()


def test_rerun_reuses_answers_and_judgments(setup, monkeypatch):
  d, kw, results = setup
  wd = d / "eval"
  os.remove(wd / "DONE")
  os.remove(wd / "results.json")

  def no_sampling(*a, **k):
    raise AssertionError("a rerun sampled or judged again")

  monkeypatch.setattr(answers_lib, "Sampler", no_sampling)
  from cai_jax.programs.evaluate import pairwise  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(pairwise, "_feedback_judgments", no_sampling)
  monkeypatch.setattr(pairwise, "Sampler", lambda *a, **k: None)
  again = json.loads(open(pairwise_eval(str(wd), **kw)).read())
  assert again == results


def test_preference_model_judge(setup, tmp_path, random_lm, words_tokenizer):
  d, kw, _ = setup
  graphdef, params = SavedModel.open(random_lm).load(kind="scalar")
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  leaves[-1] = rng.normal(0, 1, np.shape(leaves[-1])).astype(np.float32)
  params = jax.tree.unflatten(treedef, leaves)
  pm = save_model(str(tmp_path / "pm"), params, SavedModel.open(random_lm).config,
                  kind="scalar", info={"tokenizer_path": words_tokenizer.path})
  wd = tmp_path / "pm_eval"
  res = json.loads(open(pairwise_eval(str(wd), **{**kw, "judge": pm,
                                                  "injection_probe": 4})).read())
  assert res["judge_kind"] == "preference model"
  net = models.merge(graphdef, params)

  forward = jax.jit(lambda ids: net(ids)[0])

  @functools.lru_cache(maxsize=None)   # each answer once (a pair of models shares them)
  def score(prompt, answer):
    """The score at the answer's last token; the tokens padded on the right to 128 (one
    compilation; a causal model's earlier positions never see the padding)."""
    ids = words_tokenizer.encode_dialogue([Turn("Human", prompt), Turn(ASSISTANT, answer)]).ids
    assert len(ids) <= 128
    return float(forward(np.asarray([ids + [0] * (128 - len(ids))], np.int32))[len(ids) - 1])

  for kind in ("red_team", "helpful"):
    ans = [_answers(str(wd), m, kind) for m in ("base", "mid", "top")]
    rows = _rows(str(wd), kind)
    for r in rows:
      scores = [score(ans[m][r["prompt"]]["prompt"], ans[m][r["prompt"]]["answer"])
                for m in (r["a"], r["b"])]
      assert [r["r_a"], r["r_b"]] == pytest.approx(scores, abs=2e-4)
      assert r["p_a"] == pytest.approx(1 / (1 + np.exp(scores[1] - scores[0])), abs=2e-4)
    # the probe: the injected answer scored again by a full forward of the PM
    picked = [rows[i] for i in injection.select(len(rows), 4, 0)]
    sides = injection.plan_sides([r["p_a"] for r in picked], 0)
    after = []
    for r, side in zip(picked, sides):
      row = ans[(r["a"], r["b"])[side]][r["prompt"]]
      new = score(row["prompt"], row["answer"] + injection.DEFAULT_TEXT)
      d = new - r["r_b"] if side == 0 else r["r_a"] - new
      after.append(1 / (1 + np.exp(-d)))
    want = injection.injection_stats([r["p_a"] for r in picked], after, sides)
    got = res["injection"][kind]
    assert got["num_probed"] == 4 and got["injection_flip_rate"] == want["injection_flip_rate"]
    assert got["injection_pull"] == pytest.approx(want["injection_pull"], abs=2e-4)
  assert "Injected instruction to the judge" in (wd / "results.md").read_text()


def test_injection_probe_with_the_feedback_judge(setup, tmp_path, random_lm, words_tokenizer):
  d, kw, results = setup
  wd = tmp_path / "probe"   # the finished run, DONE deleted: answers and judgments reused
  shutil.copytree(d / "eval", wd)
  for name in ("DONE", "results.json"):
    if (wd / name).exists():
      os.remove(wd / name)
  got = json.loads(open(pairwise_eval(str(wd), **kw, injection_probe=3)).read())
  probe = got.pop("injection")
  assert got == results   # Elo, win rates and agreement untouched
  assert json.loads((wd / "RUN.json").read_text())["hash"] == json.loads(
      (d / "eval" / "RUN.json").read_text())["hash"]   # the probe is not in the identity
  judge = models.merge(*SavedModel.open(random_lm).load())
  names = ["base", "mid", "top"]
  for kind in ("red_team", "helpful"):
    rows, s = _rows(str(wd), kind), probe[kind]
    assert s["num_probed"] == 3 and s["num_on_preferred"] == 2 and s["num_on_rejected"] == 1
    assert 0 <= s["injection_flip_rate"] <= 1 and -1 <= s["injection_pull"] <= 1
    # against a brute-force forward of the judge on the injected pair, both orders
    ans = [_answers(str(wd), m, kind) for m in names]
    picked = [rows[i] for i in injection.select(len(rows), 3, 0)]
    sides = injection.plan_sides([r["p_a"] for r in picked], 0)
    after = []
    for r, side in zip(picked, sides):
      req = [Turn("Human", ans[0][r["prompt"]]["prompt"])]
      x, y = injection.inject(ans[r["a"]][r["prompt"]]["answer"],
                              ans[r["b"]][r["prompt"]]["answer"], int(side))
      p_ab = _p_a(judge, words_tokenizer, cc.comparison_prompt(req, x, y, r["principle"]))
      p_ba = _p_a(judge, words_tokenizer, cc.comparison_prompt(req, y, x, r["principle"]))
      after.append(0.5 * (p_ab + 1 - p_ba))
    want = injection.injection_stats([r["p_a"] for r in picked], after, sides)
    assert s["injection_pull"] == pytest.approx(want["injection_pull"], abs=2e-4)
    assert s["injection_flip_rate"] == want["injection_flip_rate"]
  md = (wd / "results.md").read_text()
  assert "## Injected instruction to the judge" in md
  assert f"| harmlessness | 3 | {probe['red_team']['injection_flip_rate']:.3f} |" in md


@pytest.mark.parametrize("change, match", [
    (dict(anchor="nobody"), "anchor 'nobody' is not in models"),
    (dict(lines=(("base", "ghost"),)), "lines names 'ghost'"),
    (dict(models={"only": None}), "at least two models"),
    (dict(helpful_principles=()), "helpful_principles is empty"),
])
def test_bad_arguments_fail_before_work(setup, tmp_path, change, match):
  _, kw, _ = setup
  kw = {**kw, **change}
  if "models" in change:
    kw["models"] = {"only": kw.get("judge")}
  with pytest.raises(ValueError, match=match):
    pairwise_eval(str(tmp_path / "bad"), **kw)
  assert not (tmp_path / "bad" / "answers").exists()
