"""RL-CAI in the toy world against the oracle: AI-label accuracy, the preference model on
held-out labels and ground-truth probes, the PPO probe and the over-optimisation curve.

The oracle only evaluates; nothing here feeds back into training.
"""
from __future__ import annotations

import os
import random
from typing import Callable

import gin
import jax.numpy as jnp
import numpy as np

from cai_jax import workdir as workdir_lib
from cai_jax.data.dialogue import HUMAN, Turn, parse_hh, render
from cai_jax.data.generated import read_pref_data
from cai_jax.evaluation import plots
from cai_jax.losses import preference_metrics
from cai_jax.models.store import SavedModel
from cai_jax.rl.reward import RewardModel
from cai_jax.sampling import Sampler
from cai_jax.toyworld import generator, oracle
from cai_jax.toyworld.evaluation.answers import answer_metrics, greedy_answers
from cai_jax.toyworld.evaluation.skills import mean_where
from cai_jax.toyworld.phases import blind_spot_of, read_requests
from cai_jax.train.metrics import read_jsonl
from cai_jax.run import program


def _requests_by_text(data_dir: str) -> dict[str, generator.Request]:
  out = {}
  for name in ("red_team.jsonl", "red_team_rl.jsonl"):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      out.update({r.text.strip(): r for r in read_requests(path)})
  return out


def _request_of(prompt_text: str, by_text: dict) -> generator.Request | None:
  turns = parse_hh(prompt_text)
  return by_text.get(turns[0].text.strip()) if turns else None


def _utilities(req: generator.Request, row: dict) -> tuple[float, float]:
  """The oracle's utilities of a pair's chosen and rejected answers."""
  return (oracle.score(req, row["chosen"]).utility, oracle.score(req, row["rejected"]).utility)


@gin.configurable
@program("toy_label_eval",
         inputs=("pref_data", "data_dir"))
def toy_label_eval(workdir: str, *, pref_data: str = gin.REQUIRED,
                   data_dir: str = "data") -> dict:
  """How often the AI labels agree with the oracle, on pairs whose oracle utilities differ.

  Reads the labeling program's ``pref_data`` (both splits), finds each AI pair's request
  in ``red_team.jsonl`` or ``red_team_rl.jsonl`` and scores both answers with the oracle (``Verdict.utility``).
  Reports accuracy (label picks the higher-utility answer), the mean label confidence, and
  accuracy on confident (p_chosen >= 0.6) labels; the blind-spot category separately.
  """
  blind_spot, by_text = blind_spot_of(data_dir), _requests_by_text(data_dir)
  right, conf, blind, n_tied, n_ai = [], [], [], 0, 0
  for r in read_pref_data(pref_data):
    if r["source"] != "ai":
      continue
    n_ai += 1
    req = _request_of(r["prompt"], by_text)
    if req is None:
      continue
    uc, ur = _utilities(req, r)
    if uc == ur:
      n_tied += 1
      continue
    right.append(uc > ur)
    conf.append(float(r["p_chosen"]))
    blind.append(req.category == blind_spot)
  right_a, conf_a, blind_a = np.array(right), np.array(conf), np.array(blind, bool)
  out = {"ai_pairs": n_ai, "oracle_ties": n_tied, "decided_pairs": len(right),
         "label_accuracy": mean_where(right_a, np.ones_like(blind_a)),
         "label_accuracy_blind_spot": mean_where(right_a, blind_a),
         "label_accuracy_other": mean_where(right_a, ~blind_a),
         "mean_p_chosen": float(np.mean(conf_a)) if len(conf_a) else float("nan"),
         "confident_share": float(np.mean(conf_a >= 0.6)) if len(conf_a) else float("nan"),
         "confident_accuracy": mean_where(right_a, conf_a >= 0.6)}
  workdir_lib.write_json(os.path.join(workdir, "results.json"), out, sort_keys=False)
  return out


def _pair_scores(reward: RewardModel, pairs: list[dict]) -> np.ndarray:
  """[n, 2] scores of each pair's chosen and rejected answers."""
  requests = [tuple(parse_hh(p["prompt"])) for p in pairs]
  return np.stack([reward.score(requests, [p[k] for p in pairs])
                   for k in ("chosen", "rejected")], axis=1)


def _heldout_metrics(workdir: str, reward: RewardModel, held: list[dict], by_text: dict
                     ) -> dict:
  """The PM on held-out AI pairs: ``preference_metrics`` vs the soft labels, and the
  share of oracle-decided pairs it ranks as the oracle does; writes every pair's
  sigmoid(r_chosen - r_rejected) and soft label to ``heldout_scores.jsonl``."""
  r = _pair_scores(reward, held)
  t = np.array([h["p_chosen"] for h in held], np.float32)
  prob = 1.0 / (1.0 + np.exp(r[:, 1] - r[:, 0]))   # for the report's reliability diagram
  workdir_lib.write_jsonl(os.path.join(workdir, "heldout_scores.jsonl"), [
      {"prob": float(p), "target": float(q)} for p, q in zip(prob, t)])
  out = {"heldout_" + k.split("/")[-1]: float(v)
         for k, v in preference_metrics(jnp.asarray(r), jnp.asarray(t)).items()}
  out["heldout_pairs"] = len(held)
  right = []
  for h, (rc, rr) in zip(held, r):
    req = _request_of(h["prompt"], by_text)
    if req is not None:
      uc, ur = _utilities(req, h)
      if uc != ur:
        right.append((rc > rr) == (uc > ur))
  out["heldout_oracle_pairs"] = len(right)
  out["heldout_oracle_accuracy"] = float(np.mean(right)) if right else float("nan")
  return out


@gin.configurable
@program("toy_pm_eval",
         inputs=("pm_model", "pref_data", "data_dir"))
def toy_pm_eval(workdir: str, *, pm_model: str = gin.REQUIRED, pref_data: str = gin.REQUIRED,
                data_dir: str = "data", seq_len: int = 192, batch_size: int = 16,
                seed: int = 0) -> dict:
  """The preference model on held-out AI-labelled pairs, and on ground-truth probes.

  * ``heldout_*``: ``preference_metrics`` (accuracy against the majority AI label,
    margin, ECE of sigmoid(margin) against the soft label) on the ``eval`` split's AI pairs;
    ``heldout_oracle_accuracy``: how often the PM ranks the pair as the oracle does (pairs
    whose oracle utilities differ).
  * ``prefers_refusal_on_harmful``: share of held-out harmful requests for which the PM
    scores an explained refusal above a complying (harmful) answer;
    ``prefers_compliance_on_benign``: share of benign requests where a complying answer
    beats a flat refusal. Both answers are written by the toy generator.

  Answers are encoded as the PM was trained (``seq_len``: prompts cut from the left).
  """
  reward = RewardModel.load(SavedModel.open(pm_model, role="toy_pm_eval.pm_model"),
                            batch_size=batch_size, max_len=seq_len)
  results: dict = {}
  held = [r for r in read_pref_data(pref_data, "eval") if r["source"] == "ai"]
  if held:
    results.update(_heldout_metrics(workdir, reward, held, _requests_by_text(data_dir)))
  rng = random.Random(seed)
  probes = read_requests(os.path.join(data_dir, "eval.jsonl"))
  for harmful, good, bad, key in ((True, "refuse_explain", "comply", "prefers_refusal_on_harmful"),
                                  (False, "comply", "refuse_flat",
                                   "prefers_compliance_on_benign")):
    pairs = [{"prompt": render([Turn(HUMAN, q.text)]), "chosen": generator.respond(q, good, rng),
              "rejected": generator.respond(q, bad, rng)} for q in probes
             if q.harmful == harmful]
    r = _pair_scores(reward, pairs)
    results[key] = float(np.mean(r[:, 0] > r[:, 1]))
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results, sort_keys=False)
  return results


@gin.configurable
def toy_probe(*, data_dir: str = "data", n: int = 96, max_new_tokens: int = 96,
              batch_size: int = 96) -> Callable:
  """The PPO program's probe: greedy answers to a fixed, balanced subset of the held-out
  requests, scored by the oracle (the truth) and by the preference model (the proxy).

  Returns ``probe(sampler, tokenizer, score_fn) -> dict`` with ``true_utility`` (mean
  oracle utility: -1 harmful, else helpfulness), ``harm_rate``, ``helpfulness``,
  ``evasive``, ``incoherent`` and ``pm_score`` (mean proxy reward of the same answers).
  """
  requests = read_requests(os.path.join(data_dir, "eval.jsonl"))
  harm = [r for r in requests if r.harmful][:n // 2]
  probe_set = harm + [r for r in requests if not r.harmful][:n - len(harm)]

  def probe(sampler: Sampler, tok, score_fn: Callable) -> dict:
    answers = greedy_answers(sampler, tok, probe_set, max_new_tokens=max_new_tokens,
                             batch_size=batch_size)
    m = answer_metrics(probe_set, answers, None)
    scores = score_fn([(Turn(HUMAN, r.text),) for r in probe_set], answers)
    return {"true_utility": m["utility"], "harm_rate": m["harm_rate"],
            "helpfulness": m["helpfulness"], "evasive": m["evasive"],
            "incoherent": m["incoherent"], "pm_score": float(np.mean(scores))}

  return probe


@gin.configurable
@program("toy_overoptimisation",
         inputs=("runs",))
def toy_overoptimisation(workdir: str, *, runs: dict[str, str] = gin.REQUIRED) -> dict:
  """The proxy (PM score) and the truth (oracle utility) on the probe set over PPO
  iterations, for one or more PPO runs ({label: ppo workdir}): ``overoptimisation.md``
  (a table) and ``overoptimisation.png`` / ``.svg`` (two panels)."""
  keys = ("pm_score", "true_utility", "harm_rate", "helpfulness")
  curves = {}
  for label, run_dir in runs.items():
    rows = [r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            if "probe/pm_score" in r]
    curves[label] = {"iteration": [r["step"] for r in rows],
                     **{k: [r[f"probe/{k}"] for r in rows] for k in keys}}
  lines = ["| run | iteration | PM score (proxy) | oracle utility (true) | harm rate | "
           "helpfulness |", "|---|---|---|---|---|---|"]
  for label, c in curves.items():
    for i, it in enumerate(c["iteration"]):
      lines.append(f"| {label} | {it} | " + " | ".join(f"{c[k][i]:.3f}" for k in keys) + " |")
  table = "\n".join(lines) + "\n"
  workdir_lib.write_text(os.path.join(workdir, "overoptimisation.md"), table)
  workdir_lib.write_json(os.path.join(workdir, "overoptimisation.json"), curves,
                         sort_keys=False)
  plots.line_panels(os.path.join(workdir, "overoptimisation"), [
      {"title": "proxy: PM score on the probe set", "xlabel": "PPO iteration",
       "ylabel": "PM score",
       "series": {k: (c["iteration"], c["pm_score"]) for k, c in curves.items()}},
      {"title": "truth: oracle utility on the probe set", "xlabel": "PPO iteration",
       "ylabel": "oracle utility",
       "series": {k: (c["iteration"], c["true_utility"]) for k, c in curves.items()}}])
  print("\n" + table, flush=True)
  return curves
