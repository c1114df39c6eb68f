"""RL-CAI AI-feedback labels: sample two answers per prompt, let a feedback model compare them.

For every prompt (Bai et al. 2022, Sec. 4.1 and Algorithm 2):

1. The policy (the SL-CAI model) samples two answers from one shared prefill
   (``Sampler.generate(..., num_samples=2)``).
2. For each of ``num_principles`` comparison principles (a pure function of
   ``(seed, prompt index)``), the feedback model reads the multiple-choice question of
   ``constitution.comparison_prompt`` and we take the log-probabilities of the option tokens
   ``"(A)"`` / ``"(B)"`` at the answer slot (``sampling.candidate_logprobs``):
   ``P(A) = softmax`` over the two (``judge.preference_probability``).
3. ``swap_orders=True`` scores the pair in both orders and averages them (against position
   bias; Lee et al. 2023, not in Bai et al.); several principles are averaged
   (``judge.ensemble``, the paper's principle ensembles).
4. ``chain_of_thought=True``: the feedback model first writes its reasoning after
   ``"Let's think step-by-step:"``, then is scored after ``"Therefore the answer is:"``; the
   final probability is clamped to ``clamp`` (the paper's 40-60 %, applied only with CoT,
   as in the paper).

The pair is stored with the preferred answer as ``chosen`` and ``p_chosen >= 0.5`` its
probability (the soft label the preference model and DPO use as their target), plus the
principle ids, the raw per-order probabilities, the reasoning and where it came from.
Pairs whose two answers are identical carry no preference and are dropped (counted).
Helpfulness pairs (e.g. human-labelled ones) can be mixed in from a chosen/rejected JSONL
(``helpful_data``), as the paper mixes human helpfulness labels with AI harmlessness labels.

Output: the ArrayRecord set ``{workdir}/records/pref_data`` (splits ``train`` and, with
``eval_fraction > 0``, ``eval``: held-out pairs for the preference model's calibration) and
``diagnostics.json`` / ``diagnostics.md`` next to it: swap-flip rate, first-position win
rate, correlation between length difference and preference, the label histogram.
Resumable like ``generate_sl``: finished shards are kept and skipped on a rerun.

  python -m cai_jax.main --gin_file=runs/label_preferences.gin --workdir=/tmp/label \
      --gin_param="label_preferences.policy_dir='/tmp/sl_cai/model'" \
      --gin_param="label_preferences.prompts_path='/tmp/data/red_team.jsonl'"
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Sequence

import gin
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from cai_jax import constitution as cc
from cai_jax import judge
from cai_jax.data.builders import write_records
from cai_jax.data.conversations import parse_preference_row, read_jsonl
from cai_jax.data.dialogue import render
from cai_jax.data.records import read_rows, sha256_file
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import load_model
from cai_jax.programs import common
from cai_jax.programs.generate_sl import read_prompts
from cai_jax.sampling import Sampler, candidate_logprobs

_log = logging.getLogger(__name__)

DATASET_NAME = "pref_data"
SHARDS_DIR = "shards"


def pref_features() -> tfds.features.FeaturesDict:
  """``builders.preference_features`` plus the labeling record of each pair.

  ``p_a_order1[j]``: P("(A)") under principle j with the first answer shown as (A);
  ``p_a_order2[j]``: the same with the order swapped (empty without ``swap_orders``);
  ``p_first``: the final probability that the FIRST sampled answer is preferred.
  """
  text, seq, f32 = tfds.features.Text(), tfds.features.Sequence, np.float32
  return tfds.features.FeaturesDict({
      "id": text, "prompt": text, "chosen": text, "rejected": text,
      "p_chosen": tfds.features.Scalar(f32), "index": tfds.features.Scalar(np.int64),
      "source": text, "principle_ids": seq(text), "p_a_order1": seq(f32),
      "p_a_order2": seq(f32), "p_first": tfds.features.Scalar(f32),
      "first_is_chosen": tfds.features.Scalar(np.bool_), "reasoning": seq(text),
      "flags": seq(text)})


def label_from_probabilities(p_a_order1: np.ndarray, p_a_order2: np.ndarray | None, *,
                             clamp: tuple[float, float] | None) -> float:
  """P(first answer preferred) from per-principle option probabilities.

  Per principle: both orders averaged (``judge.order_averaged_probability``) when the
  swapped order was scored; then the mean over principles (``judge.ensemble``); then the
  clamp, once, at the end.
  """
  p = np.asarray(p_a_order1, np.float32)
  if p_a_order2 is not None and len(p_a_order2):
    p = np.asarray(judge.order_averaged_probability(p, np.asarray(p_a_order2, np.float32)))
  p = np.asarray(judge.ensemble(p, axis=-1))
  if clamp is not None:
    p = np.asarray(judge.clamp_probability(p, clamp))
  return float(p)


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
    if k != "label_histogram":
      lines.append(f"| {k} | {fmt(v)} |")
  hist = diag.get("label_histogram")
  if hist:
    lines += ["", "p_chosen histogram:", ""]
    peak = max(hist["counts"]) or 1
    for lo, hi, c in zip(hist["edges"], hist["edges"][1:], hist["counts"]):
      lines.append(f"    [{lo:.2f}, {hi:.2f})  {'#' * round(40 * c / peak):<40} {c}")
  return "\n".join(lines) + "\n"


def _helpful_rows(path: str, limit: int | None) -> list[dict[str, Any]]:
  """Chosen/rejected JSONL rows (public HH format, optional ``p_chosen``) as pair rows."""
  out = []
  for pair in read_jsonl(path, parse_preference_row)[:limit]:
    p = float(pair["p_chosen"])
    first_is_chosen = p >= 0.5
    out.append({"id": f"helpful-{pair['id']}", "prompt": pair["prompt"],
                "chosen": pair["chosen"] if first_is_chosen else pair["rejected"],
                "rejected": pair["rejected"] if first_is_chosen else pair["chosen"],
                "p_chosen": max(p, 1.0 - p), "source": "helpful", "principle_ids": [],
                "p_a_order1": [], "p_a_order2": [], "p_first": p,
                "first_is_chosen": first_is_chosen, "reasoning": [], "flags": []})
  return out


class _Judge:
  """Scores comparison prompts with a feedback model (optionally after CoT)."""

  def __init__(self, sampler: Sampler, tok: Tokenizer, *, chain_of_thought: bool,
               cot_max_new_tokens: int, cot_temperature: float, batch_size: int):
    self.sampler, self.tok = sampler, tok
    self.cot = chain_of_thought
    self.cot_kw = dict(max_new_tokens=cot_max_new_tokens, temperature=cot_temperature,
                       stop_tokens=[tok.eos_id])
    self.batch_size = batch_size
    self.ids = (tok.single_token_id(cc.OPTION_A), tok.single_token_id(cc.OPTION_B))

  def p_option_a(self, prompts: list[cc.Prompt], seed: int) -> tuple[np.ndarray, list[str]]:
    """P("(A)") per prompt (and the reasoning written first, with CoT)."""
    reasoning = [""] * len(prompts)
    if self.cot:
      reasoning = []
      for i in range(0, len(prompts), self.batch_size):
        chunk = [p.token_ids(self.tok) for p in prompts[i:i + self.batch_size]]
        out = self.sampler.generate(chunk, seed=common.call_seed(seed, "cot", i),
                                    **self.cot_kw)
        reasoning += [cc.trim_reasoning(common.decode_generated(self.tok, t))
                      for t in out.tokens]
      prompts = [cc.cot_answer_prompt(p, r) for p, r in zip(prompts, reasoning)]
    lp = []
    for i in range(0, len(prompts), self.batch_size):
      seqs = [p.token_ids(self.tok) for p in prompts[i:i + self.batch_size]]
      lp.append(candidate_logprobs(self.sampler, seqs, list(self.ids)))
    lp = np.concatenate(lp)
    return np.asarray(judge.preference_probability(lp[:, 0], lp[:, 1])), reasoning


def _label_batch(policy: Sampler, judge_: _Judge, tok: Tokenizer, const: cc.Constitution,
                 items: list[tuple[int, str, tuple]], *, num_principles: int,
                 swap_orders: bool, clamp: tuple[float, float] | None,
                 exemplars: Sequence[cc.ComparisonExemplar], seed: int, principle_seed: int,
                 sample_kw: dict, second: Sampler | None = None
                 ) -> tuple[list[dict], dict[str, float]]:
  """Samples and labels one batch of prompts; returns (rows, timings in seconds).

  ``seed`` keys this batch's sampling; principles are drawn from ``(principle_seed,
  prompt index)`` so they do not depend on how prompts are batched."""
  t0 = time.perf_counter()
  prompts = [cc.initial_prompt(req).token_ids(tok) for _, _, req in items]
  out = policy.generate(prompts, num_samples=1 if second is not None else 2,
                        seed=common.call_seed(seed, "answers"), stop_tokens=[tok.eos_id],
                        **sample_kw)
  tokens = out.tokens
  source = [""] * len(tokens)
  if second is not None:
    # One answer from each model, the second model's first for a hashed half of the
    # prompts (so no model sits in one position).
    other = second.generate(prompts, seed=common.call_seed(seed, "answers2"),
                            stop_tokens=[tok.eos_id], **sample_kw).tokens
    tokens, source = [], []
    for k, (index, _, _) in enumerate(items):
      flip = common.call_seed(principle_seed, "order", index) % 2 == 1
      pair = [(out.tokens[k], "policy"), (other[k], "second_policy")]
      for t, src in (pair[::-1] if flip else pair):
        tokens.append(t)
        source.append(src)
  t_gen = time.perf_counter() - t0
  answers = [common.decode_generated(tok, t) for t in tokens]
  truncated = [tok.eos_id not in t for t in tokens]
  # One comparison prompt per (pair, principle, order).
  jobs, cprompts = [], []
  for k, (index, _, req) in enumerate(items):
    a, b = answers[2 * k], answers[2 * k + 1]
    if a == b:
      continue
    principles = cc.sample_comparison_principles(const, seed=principle_seed,
                                                 prompt_index=index,
                                                 num=num_principles)
    for j, pr in enumerate(principles):
      for order, (x, y) in enumerate(((a, b), (b, a))[:2 if swap_orders else 1]):
        jobs.append((k, j, order, pr.id))
        cprompts.append(cc.comparison_prompt(req, x, y, pr, chain_of_thought=judge_.cot,
                                             exemplars=exemplars))
  t1 = time.perf_counter()
  p_a, reasoning = (judge_.p_option_a(cprompts, seed) if cprompts
                    else (np.zeros((0,)), []))
  t_judge = time.perf_counter() - t1
  per = {}
  for (k, j, order, pid), p, why in zip(jobs, p_a, reasoning):
    d = per.setdefault(k, {"p1": {}, "p2": {}, "ids": {}, "why": []})
    d["p1" if order == 0 else "p2"][j] = float(p)
    d["ids"][j] = pid
    if why:
      d["why"].append(why)
  rows = []
  for k, (index, pid, req) in enumerate(items):
    a, b = answers[2 * k], answers[2 * k + 1]
    flags = [f"answer{i}:truncated" for i in (0, 1) if truncated[2 * k + i]]
    flags += [f"answer{i}:{source[2 * k + i]}" for i in (0, 1) if source[2 * k + i]]
    if k not in per:
      continue   # identical answers: no preference to learn
    d = per[k]
    js = sorted(d["p1"])
    p1 = [d["p1"][j] for j in js]
    p2 = [d["p2"][j] for j in js] if swap_orders else []
    p_first = label_from_probabilities(np.array(p1), np.array(p2) if p2 else None,
                                       clamp=clamp)
    first = p_first >= 0.5
    rows.append({"index": index, "id": pid, "prompt": render(req),
                 "chosen": a if first else b, "rejected": b if first else a,
                 "p_chosen": max(p_first, 1.0 - p_first), "source": "ai",
                 "principle_ids": [d["ids"][j] for j in js], "p_a_order1": p1,
                 "p_a_order2": p2, "p_first": p_first, "first_is_chosen": bool(first),
                 "reasoning": d["why"], "flags": flags})
  return rows, {"generation_s": t_gen, "judge_s": t_judge}


def _split_of(index: int, seed: int, eval_fraction: float) -> str:
  u = common.call_seed(seed, "split", index) / 0x7FFFFFFF
  return "eval" if u < eval_fraction else "train"


@gin.configurable
def label_preferences(workdir: str, *, policy_dir: str = gin.REQUIRED,
                      prompts_path: str = gin.REQUIRED,
                      constitution_path: str = gin.REQUIRED,
                      feedback_dir: str | None = None, second_policy_dir: str | None = None,
                      tokenizer_path: str | None = None,
                      num_principles: int = 1, swap_orders: bool = True,
                      chain_of_thought: bool = False,
                      clamp: tuple[float, float] | None = (0.4, 0.6),
                      exemplars: bool = True, max_new_tokens: int = 128,
                      temperature: float = 1.0, top_p: float = 1.0,
                      cot_max_new_tokens: int = 96, cot_temperature: float = 0.0,
                      helpful_data: str | None = None, max_helpful: int | None = None,
                      eval_fraction: float = 0.1, seed: int = 0, shard_size: int = 256,
                      batch_size: int = 64, max_prompts: int | None = None,
                      max_shards: int | None = None,
                      mesh_shape: tuple[int, int, int] = (-1, 1, 1)) -> str:
  """Writes the AI-labelled pair set; returns its folder ``{workdir}/records/pref_data``.

  Args:
    workdir: output folder (``shards/``, ``records/``, diagnostics, ``DONE``).
    policy_dir: the model whose answers are compared (the SL-CAI model).
    prompts_path: JSONL of prompts (``{"prompt": ...}`` or ``{"text": HH}``, opt. ``id``).
    constitution_path: the constitution whose comparison principles are used.
    feedback_dir: the feedback (judge) model; default: ``policy_dir``.
    second_policy_dir: if set, each pair is one answer of the policy and one of this model
      (e.g. the helpful-only base model, so pairs contrast harmful and harmless answers);
      ``flags`` record which answer came from where. Not in Bai et al. (both answers
      come from the SL-CAI model there).
    tokenizer_path: default: the policy model's ``info["tokenizer_path"]``.
    num_principles: principles per label (> 1: the paper's principle ensemble).
    swap_orders: score both answer orders and average them.
    chain_of_thought: the judge writes its reasoning before it is scored.
    clamp: band the CoT probability is clamped to (None: no clamp); ignored without CoT.
    exemplars: prepend the constitution's few-shot comparison exemplars.
    max_new_tokens, temperature, top_p: sampling of the two answers.
    cot_max_new_tokens, cot_temperature: sampling of the judge's reasoning.
    helpful_data: optional chosen/rejected JSONL of helpfulness pairs mixed in as they are
      (``source = "helpful"``); ``max_helpful`` caps how many.
    eval_fraction: share of pairs (by a hash of the prompt index) held out as ``eval``.
    seed: principle draws, sampler keys and the split all derive from it.
    shard_size: prompts per resumable shard; batch_size: prompts per sampler call.
    max_prompts: use only the first prompts; max_shards: stop after this many new shards.
    mesh_shape: (data, fsdp, tensor); the batch is sharded over data x fsdp.
  """
  records_dir = os.path.join(workdir, "records")
  out_path = os.path.join(records_dir, DATASET_NAME)
  if common.is_done(workdir):
    _log.info("label_preferences: %s is complete, skipping", workdir)
    return out_path
  if num_principles < 1 or shard_size < 1 or batch_size < 1:
    raise ValueError("need num_principles >= 1, shard_size >= 1 and batch_size >= 1")
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
  clamp = tuple(float(c) for c in clamp) if (clamp is not None and chain_of_thought) else None
  if clamp is not None:
    judge.clamp_probability(0.5, clamp)   # validates the band before any work

  const = cc.load_constitution(cc.resolve_constitution_path(constitution_path))
  prompts = read_prompts(prompts_path)[:max_prompts]
  feedback_dir = feedback_dir or policy_dir
  spec = {"policy_dir": os.path.abspath(policy_dir),
          "feedback_dir": os.path.abspath(feedback_dir),
          "prompts_sha256": sha256_file(prompts_path), "num_prompts": len(prompts),
          "constitution_hash": const.content_hash, "num_principles": num_principles,
          "swap_orders": swap_orders, "chain_of_thought": chain_of_thought,
          "clamp": list(clamp) if clamp else None, "exemplars": exemplars,
          "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
          "cot_max_new_tokens": cot_max_new_tokens, "cot_temperature": cot_temperature,
          "seed": seed, "shard_size": shard_size, "batch_size": batch_size}
  if second_policy_dir is not None:
    spec["second_policy_dir"] = os.path.abspath(second_policy_dir)
  shards = common.Shards.open(os.path.join(workdir, SHARDS_DIR), spec, len(prompts),
                              shard_size)
  todo = shards.todo()
  _log.info("label_preferences: %d prompts, %d shards, %d to do", len(prompts),
            shards.num_shards, len(todo))

  if todo:
    mesh = common.build_mesh(mesh_shape)
    _, graphdef, params, info = load_model(policy_dir, mesh=mesh)
    tok = Tokenizer.load(tokenizer_path or info["tokenizer_path"])
    policy = Sampler(graphdef, params, mesh=mesh)
    if os.path.abspath(feedback_dir) == os.path.abspath(policy_dir):
      judge_sampler = policy
    else:
      _, jgraph, jparams, _ = load_model(feedback_dir, mesh=mesh)
      judge_sampler = Sampler(jgraph, jparams, mesh=mesh)
    second = None
    if second_policy_dir is not None:
      _, sgraph, sparams, _ = load_model(second_policy_dir, mesh=mesh)
      second = Sampler(sgraph, sparams, mesh=mesh)
    judge_ = _Judge(judge_sampler, tok, chain_of_thought=chain_of_thought,
                    cot_max_new_tokens=cot_max_new_tokens, cot_temperature=cot_temperature,
                    batch_size=batch_size * (2 if swap_orders else 1))
    sample_kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
  ex = const.comparison_exemplars if exemplars else ()

  left = sum(len(shards.items(s)) for s in todo)
  bar = tqdm.tqdm(total=len(prompts), initial=len(prompts) - left, desc="label_preferences",
                  unit="prompt", mininterval=1.0, disable=None)
  timing = {"generation_s": 0.0, "judge_s": 0.0, "pairs": 0}
  for n_new, s in enumerate(todo):
    if max_shards is not None and n_new >= max_shards:
      _log.info("label_preferences: stopping after %d new shards (max_shards)", n_new)
      bar.close()
      return out_path
    items = [(i, *prompts[i]) for i in shards.items(s)]
    rows = []
    for b in range(0, len(items), batch_size):
      batch_rows, t = _label_batch(policy, judge_, tok, const, items[b:b + batch_size],
                                   num_principles=num_principles, swap_orders=swap_orders,
                                   clamp=clamp, exemplars=ex, principle_seed=seed,
                                   seed=common.call_seed(seed, s, b), sample_kw=sample_kw,
                                   second=second)
      rows += batch_rows
      timing["generation_s"] += t["generation_s"]
      timing["judge_s"] += t["judge_s"]
      timing["pairs"] += len(batch_rows)
      bar.update(len(items[b:b + batch_size]))
      spent = timing["generation_s"] + timing["judge_s"]
      bar.set_postfix(pairs_s=f"{timing['pairs'] / max(spent, 1e-9):.1f}")
    shards.write(s, rows)
  bar.close()

  # --- Gather shards, mix helpful pairs, split, write ------------------------------
  rows = shards.read_all()
  n_ai = len(rows)
  helpful = _helpful_rows(helpful_data, max_helpful) if helpful_data else []
  for i, r in enumerate(helpful):
    r["index"] = len(prompts) + i
  splits: dict[str, list[dict]] = {"train": [], "eval": []}
  for r in rows + helpful:
    splits[_split_of(r["index"], seed, eval_fraction)].append(r)
  if not splits["eval"]:
    del splits["eval"]
  diag = diagnostics(rows)
  summary = {"num_prompts": len(prompts), "num_pairs": n_ai,
             "identical_dropped": len(prompts) - n_ai, "num_helpful": len(helpful),
             "train": len(splits["train"]), "eval": len(splits.get("eval", [])),
             "truncated_answers": sum(len(r["flags"]) for r in rows),
             "chain_of_thought": chain_of_thought, "clamp": str(clamp),
             "swap_orders": swap_orders, "num_principles": num_principles}
  if timing["pairs"]:
    spent = timing["generation_s"] + timing["judge_s"]
    summary.update({"pairs_per_s": timing["pairs"] / spent,
                    "generation_share": timing["generation_s"] / spent})
  with open(os.path.join(workdir, "diagnostics.json"), "w", encoding="utf-8") as f:
    json.dump({"summary": summary, "diagnostics": diag}, f, indent=2)
  report = diagnostics_markdown(diag, summary)
  with open(os.path.join(workdir, "diagnostics.md"), "w", encoding="utf-8") as f:
    f.write(report)
  _log.info("label_preferences diagnostics:\n%s", report)
  provenance = {"program": "label_preferences", "constitution_hash": const.content_hash,
                "constitution_name": const.name, "spec": spec, "summary": summary,
                "gin_operative_config": gin.operative_config_str()}
  sources = [os.path.abspath(prompts_path)] + ([os.path.abspath(helpful_data)]
                                               if helpful_data else [])
  write_records(DATASET_NAME, splits, pref_features(), records_dir, provenance=provenance,
                sources=sources, overwrite=True)
  common.mark_done(workdir, f"{n_ai} AI pairs, {len(helpful)} helpful pairs\n")
  return out_path


def read_pref_data(path: str, split: str | None = None) -> list[dict[str, Any]]:
  """Rows of a ``pref_data`` set (``DATA_DIR/NAME`` or a labeling workdir); split None:
  every split."""
  return read_rows(path, DATASET_NAME, split)
