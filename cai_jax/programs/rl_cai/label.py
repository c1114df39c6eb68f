"""RL-CAI AI-feedback labels: sample two answers per prompt, let a feedback model compare them.

For every prompt (Bai et al. 2022, Sec. 4.1 and Algorithm 2):

1. The policy (the SL-CAI model) samples two answers from one shared prefill
   (``Sampler.generate(..., num_samples=2)``).
2. For each of ``num_principles`` comparison principles (a pure function of
   ``(seed, prompt index)``), the feedback model answers the multiple-choice question of
   ``constitution.comparison_prompt`` and ``rl.feedback.FeedbackModel`` reads P("(A)")
   from the log-probabilities of the option tokens at the answer slot.
3. ``swap_orders=True`` scores the pair in both orders and averages them (against position
   bias; Lee et al. 2023, not in Bai et al.); several principles are averaged (the paper's
   principle ensembles): ``judge.label_from_probabilities``.
4. ``chain_of_thought=True``: the feedback model first writes its reasoning, and the final
   probability is clamped to the paper's band (``clamp="paper"``: (0.4, 0.6), applied only
   with CoT, as in the paper). A clamp bound without CoT is an error: it would do nothing.

The pair is stored with the preferred answer as ``chosen`` and ``p_chosen >= 0.5`` its
probability (the soft label the preference model and DPO use as their target), plus the
principle ids, the raw per-order probabilities, the reasoning and where it came from.
Pairs whose two answers are identical carry no preference and are dropped (counted).
Helpfulness pairs (e.g. human-labelled ones) can be mixed in from a chosen/rejected JSONL
(``helpful_data``), as the paper mixes human helpfulness labels with AI harmlessness labels.

Output: the ArrayRecord set ``{workdir}/records/pref_data`` (``data.generated``; splits
``train`` and, with ``eval_fraction > 0``, ``eval``) and ``diagnostics.json`` / ``.md``
next to it (``rl.diagnostics``). Resumable by shards (``data.shards``).

Judge robustness (``injection_probe=N``, default 0: off): after labeling, N of the AI pairs
(drawn by ``seed``) are judged again with ``injection_text`` appended to one answer (half
of them the preferred one, half the rejected one; ``rl.injection``); the flip rate and pull
go to ``diagnostics.json`` under ``diagnostics.injection``. The probe changes neither the
labels nor ``pref_data`` (its gin lines are left out of the record set's provenance) nor
the run's identity (a diagnostic, like the cosmetic arguments): to probe a finished run,
delete its ``DONE`` and run it again with the probe (the shards are reused).

  python -m cai_jax.main --gin_file=runs/label_preferences.gin --workdir=/tmp/label \\
      --gin_param="label_preferences.policy_model='/tmp/sl_cai/model'" \\
      --gin_param="label_preferences.prompts_path='/tmp/data/red_team.jsonl'"
"""
from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any, Callable, Sequence

import gin
import tqdm

from cai_jax import constitution as cc
from cai_jax import judge
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.builders import write_records
from cai_jax.data.conversations import read_prompts
from cai_jax.data.dialogue import render
from cai_jax.data.generated import PREF_DATA, helpful_pref_rows, pref_features
from cai_jax.data.records import sha256_file
from cai_jax.data.shards import Shards
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import SavedModel
from cai_jax.rl import injection
from cai_jax.rl.diagnostics import diagnostics, diagnostics_markdown
from cai_jax.rl.feedback import FeedbackModel
from cai_jax.sampling import Sampler, call_seed
from cai_jax.sharding import processes
from cai_jax.sharding.processes import open_shards
from cai_jax.run import program
from cai_jax.train.metrics import log_samples
from cai_jax.run.runner import COSMETIC

_log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
PAPER_CLAMP = (0.4, 0.6)
# The injection probe's arguments: a diagnostic, in neither the identity nor the data's
# provenance (its gin bindings and their continuation lines are cut from it).
_PROBE_ARGS = ("injection_probe", "injection_text")
INJECTION_TEXT = injection.DEFAULT_TEXT
_PROBE_CHECKS = {"injection_probe": lambda v: None if v >= 0 else "must be >= 0"}
_PROBE_GIN = re.compile(r"^(\S*/)?label_preferences\.injection_\w+ =.*\n(^[ \t]+.*\n)*",
                        re.MULTILINE)


def resolve_clamp(clamp: Any, chain_of_thought: bool) -> tuple[float, float] | None:
  """The band CoT labels are clamped to: ``"paper"`` is (0.4, 0.6) with CoT and nothing
  without; None is no clamp. A band without chain of thought is refused (Bai et al.
  clamp only CoT probabilities, so the binding would silently do nothing)."""
  if clamp == "paper":
    return PAPER_CLAMP if chain_of_thought else None
  if clamp is None:
    return None
  judge.clamp_probability(0.5, clamp)   # a valid (lo, hi) band, checked before any work
  if not chain_of_thought:
    raise ValueError(f"label_preferences.clamp={clamp!r} applies only to chain-of-thought "
                     "labels; set chain_of_thought=True, or leave clamp unbound")
  return tuple(float(c) for c in clamp)


def _sample_answers(policy: Sampler, second: Sampler | None, tok: Tokenizer, items: list,
                    *, seed: int, principle_seed: int, sample_kw: dict
                    ) -> tuple[list[list[int]], list[str]]:
  """Two answers per prompt (rows 2k, 2k + 1) and, with a second policy, their sources."""
  prompts = [cc.initial_prompt(req).token_ids(tok) for _, _, req in items]
  out = policy.generate(prompts, num_samples=1 if second is not None else 2,
                        seed=call_seed(seed, "answers"), stop_tokens=tok.stop_ids,
                        **sample_kw)
  if second is None:
    return out.tokens, [""] * len(out.tokens)
  # One answer from each model, the second model's first for a hashed half of the
  # prompts (so no model sits in one position).
  other = second.generate(prompts, seed=call_seed(seed, "answers2"),
                          stop_tokens=tok.stop_ids, **sample_kw).tokens
  tokens, source = [], []
  for k, (index, _, _) in enumerate(items):
    flip = call_seed(principle_seed, "order", index) % 2 == 1
    pair = [(out.tokens[k], "policy"), (other[k], "second_policy")]
    for t, src in (pair[::-1] if flip else pair):
      tokens.append(t)
      source.append(src)
  return tokens, source


def _judge_pairs(feedback: FeedbackModel, const: cc.Constitution, items: list,
                 answers: list[str], *, num_principles: int, swap_orders: bool,
                 exemplars: Sequence[cc.ComparisonExemplar], seed: int, principle_seed: int
                 ) -> dict[int, dict]:
  """Per pair k (identical answers skipped): P("(A)") by principle and order, the
  principle ids and the reasoning."""
  jobs, prompts = [], []
  for k, (index, _, req) in enumerate(items):
    a, b = answers[2 * k], answers[2 * k + 1]
    if a == b:
      continue
    for j, pr in enumerate(cc.sample_comparison_principles(
        const, seed=principle_seed, prompt_index=index, num=num_principles)):
      for order, (x, y) in enumerate(((a, b), (b, a))[:2 if swap_orders else 1]):
        jobs.append((k, j, order, pr.id))
        prompts.append(cc.comparison_prompt(req, x, y, pr,
                                            chain_of_thought=feedback.chain_of_thought,
                                            exemplars=exemplars))
  p_a, reasoning = feedback.p_option_a(prompts, seed)
  per: dict[int, dict] = {}
  for (k, j, order, pid), p, why in zip(jobs, p_a, reasoning):
    d = per.setdefault(k, {"p1": {}, "p2": {}, "ids": {}, "why": []})
    d["p1" if order == 0 else "p2"][j] = float(p)
    d["ids"][j] = pid
    if why:
      d["why"].append(why)
  return per


def _pair_row(index: int, pid: str, req, a: str, b: str, d: dict, flags: list[str], *,
              swap_orders: bool, clamp: tuple[float, float] | None) -> dict:
  """One labelled pair (``pref_features``), the preferred answer as ``chosen``."""
  js = sorted(d["p1"])
  p1 = [d["p1"][j] for j in js]
  p2 = [d["p2"][j] for j in js] if swap_orders else []
  p_first = judge.label_from_probabilities(p1, p2 or None, clamp=clamp)
  first = p_first >= 0.5
  return {"index": index, "id": pid, "prompt": render(req), "chosen": a if first else b,
          "rejected": b if first else a, "p_chosen": max(p_first, 1.0 - p_first),
          "source": "ai", "principle_ids": [d["ids"][j] for j in js], "p_a_order1": p1,
          "p_a_order2": p2, "p_first": p_first, "first_is_chosen": bool(first),
          "reasoning": d["why"], "flags": flags}


def _label_batch(policy: Sampler, second: Sampler | None, feedback: FeedbackModel,
                 tok: Tokenizer, const: cc.Constitution, items: list, *, seed: int,
                 principle_seed: int, sample_kw: dict, num_principles: int,
                 swap_orders: bool, clamp: tuple[float, float] | None,
                 exemplars: Sequence[cc.ComparisonExemplar]) -> tuple[list[dict], dict]:
  """Samples and labels one batch of ``(index, id, request)`` items; returns (rows,
  timings in seconds). ``seed`` keys this batch's sampling; principles are drawn from
  ``(principle_seed, prompt index)`` so they do not depend on how prompts are batched."""
  t0 = time.perf_counter()
  tokens, source = _sample_answers(policy, second, tok, items, seed=seed,
                                   principle_seed=principle_seed, sample_kw=sample_kw)
  t_gen = time.perf_counter() - t0
  answers = [tok.decode_generated(t) for t in tokens]
  per = _judge_pairs(feedback, const, items, answers, num_principles=num_principles,
                     swap_orders=swap_orders, exemplars=exemplars, seed=seed,
                     principle_seed=principle_seed)
  rows = []
  for k, (index, pid, req) in enumerate(items):
    if k not in per:
      continue   # identical answers: no preference to learn
    flags = [f"answer{i}:truncated" for i in (0, 1)
             if not set(tok.stop_ids) & set(tokens[2 * k + i])]
    flags += [f"answer{i}:{source[2 * k + i]}" for i in (0, 1) if source[2 * k + i]]
    rows.append(_pair_row(index, pid, req, answers[2 * k], answers[2 * k + 1], per[k], flags,
                          swap_orders=swap_orders, clamp=clamp))
  return rows, {"generation_s": t_gen, "judge_s": time.perf_counter() - t0 - t_gen}


def _split_of(index: int, seed: int, eval_fraction: float) -> str:
  u = call_seed(seed, "split", index) / 0x7FFFFFFF
  return "eval" if u < eval_fraction else "train"


def _write_pref_data(workdir: str, shards: Shards, *, spec: dict, const: cc.Constitution,
                     num_prompts: int, helpful_data: str | None, max_helpful: int | None,
                     prompts_path: str | Sequence[str], eval_fraction: float,
                     timing: dict, probe: Callable[[list], dict] | None = None) -> str:
  """Gathers the shards, mixes in helpful pairs, splits, writes the record set and the
  diagnostics (with ``probe(rows)``, the injection probe's, under ``injection``); returns
  the record set folder."""
  rows = shards.read_all()
  if not rows:
    raise RuntimeError(f"label_preferences: none of the {num_prompts} prompts gave a pair "
                       "(the policy's two answers were identical every time); sample with "
                       "a higher temperature or check the policy model")
  helpful = helpful_pref_rows(helpful_data, max_helpful) if helpful_data else []
  for i, r in enumerate(helpful):
    r["index"] = num_prompts + i
  splits: dict[str, list[dict]] = {"train": [], "eval": []}
  for r in rows + helpful:
    splits[_split_of(r["index"], spec["seed"], eval_fraction)].append(r)
  if not splits["eval"]:
    del splits["eval"]
  diag = diagnostics(rows)
  if probe is not None:
    diag["injection"] = probe(rows)
  summary = {"num_prompts": num_prompts, "num_pairs": len(rows),
             "identical_dropped": num_prompts - len(rows), "num_helpful": len(helpful),
             "train": len(splits["train"]), "eval": len(splits.get("eval", [])),
             "truncated_answers": sum(f.endswith(":truncated") for r in rows
                                      for f in r["flags"]),
             "chain_of_thought": spec["chain_of_thought"], "clamp": str(
                 tuple(spec["clamp"]) if spec["clamp"] else None),
             "swap_orders": spec["swap_orders"], "num_principles": spec["num_principles"]}
  if timing["pairs"]:
    spent = timing["generation_s"] + timing["judge_s"]
    summary.update({"pairs_per_s": timing["pairs"] / spent,
                    "generation_share": timing["generation_s"] / spent})
  if timing.get("cot"):   # this run's chain-of-thought answers, and those prefilled again
    summary.update({"cot_answers": timing["cot"]["answers"],
                    "cot_answers_reprefilled": timing["cot"]["reprefilled"]})
    _log.info("label_preferences: %d of %d chain-of-thought answer prompts were prefilled "
              "again (the others continued their reasoning's cache)",
              timing["cot"]["reprefilled"], timing["cot"]["answers"])
  workdir_lib.write_json(paths.join(workdir, "diagnostics.json"),
                         {"summary": summary, "diagnostics": diag})
  report = diagnostics_markdown(diag, summary)
  log_samples(workdir, "label_preferences/judgment", [
      f"**Prompt**\n\n{r['prompt']}\n\n**Chosen** (p = {r['p_chosen']:.3f})\n\n"
      f"{r['chosen']}\n\n**Rejected**\n\n{r['rejected']}" for r in rows[:8]])
  workdir_lib.write_text(paths.join(workdir, "diagnostics.md"), report)
  _log.info("label_preferences diagnostics:\n%s", report)
  provenance = {"program": "label_preferences", "constitution_hash": const.content_hash,
                "constitution_name": const.name, "spec": spec, "summary": summary,
                "gin_operative_config": _PROBE_GIN.sub("", gin.operative_config_str())}
  sources = _prompt_files(prompts_path) + ([paths.absolute(helpful_data)]
                                               if helpful_data else [])
  records_dir = paths.join(workdir, "records")
  write_records(PREF_DATA, splits, pref_features(), records_dir, provenance=provenance,
                sources=sources, overwrite=True)
  workdir_lib.mark_done(workdir, f"{len(rows)} AI pairs, {len(helpful)} helpful pairs\n")
  return paths.join(records_dir, PREF_DATA)


def _label_shards(shards: Shards, todo: list[int], prompts: list, sampler: Sampler,
                  second: Sampler | None, feedback: FeedbackModel, tok: Tokenizer,
                  const: cc.Constitution, *, seed: int, batch_size: int, timing: dict,
                  **kw) -> None:
  """Labels the shards ``todo``, each written when done (a batch's draws depend on its
  shard and place in it, not on the process that labels it)."""
  bar = tqdm.tqdm(total=sum(len(shards.items(s)) for s in todo), desc="label_preferences",
                  unit="prompt", mininterval=1.0, disable=None)
  for s in todo:
    items = [(i, *prompts[i]) for i in shards.items(s)]
    rows = []
    for b in range(0, len(items), batch_size):
      batch_rows, t = _label_batch(sampler, second, feedback, tok, const,
                                   items[b:b + batch_size], seed=call_seed(seed, s, b), **kw)
      rows += batch_rows
      for k in ("generation_s", "judge_s"):
        timing[k] += t[k]
      timing["pairs"] += len(batch_rows)
      if feedback.chain_of_thought:   # answer prompts scored, and those prefilled again
        timing["cot"] = dict(feedback.cot_counts)
      bar.update(len(items[b:b + batch_size]))
      spent = timing["generation_s"] + timing["judge_s"]
      bar.set_postfix(pairs_s=f"{timing['pairs'] / max(spent, 1e-9):.1f}")
    shards.write(s, rows)
  bar.close()


def _injection_probe(judge_: FeedbackModel, prompts: list, const: cc.Constitution, num: int,
                     text: str, *, principle_seed: int, swap_orders: bool,
                     clamp: tuple[float, float] | None,
                     exemplars: Sequence[cc.ComparisonExemplar], **_) -> Callable:
  """``probe(rows)``: ``rl.injection.probe_pref_rows`` on the pairs as they were labelled."""
  return functools.partial(injection.probe_pref_rows, judge_, request=lambda i: prompts[i][1],
                           principle=const.comparison_principle, num=num, text=text,
                           seed=principle_seed, swap_orders=swap_orders, clamp=clamp,
                           exemplars=exemplars)


def _job_spec(policy: SavedModel, feedback: SavedModel, second: SavedModel | None,
              prompt_files: list[str], prompts: list, const: cc.Constitution,
              settings: dict) -> dict:
  """What identifies the labeling job (its shards belong to it and to nothing else)."""
  spec = {"policy_model": policy.path, "feedback_model": feedback.path,
          "prompts_sha256": ",".join(sha256_file(p) for p in prompt_files),
          "num_prompts": len(prompts), "constitution_hash": const.content_hash, **settings}
  if second is not None:
    spec["second_policy_model"] = second.path
  return spec


def _open_models(policy_model: str, feedback_model: str | None, second_policy_model: str | None
                 ) -> tuple[SavedModel, SavedModel, SavedModel | None]:
  """The policy, the feedback model (default: the policy) and the second policy (or None)."""
  role = "label_preferences.{}".format
  second = None if second_policy_model is None else SavedModel.open(
      second_policy_model, role=role("second_policy_model"))
  return (SavedModel.open(policy_model, role=role("policy_model")),
          SavedModel.open(feedback_model or policy_model, role=role("feedback_model")), second)


def _prompt_files(prompts_path: str | Sequence[str]) -> list[str]:
  """One or several prompt files, resolved (cwd, then the repository)."""
  files = [prompts_path] if isinstance(prompts_path, str) else list(prompts_path)
  return [workdir_lib.resolve_input(p) for p in files]


def _models(policy: SavedModel, feedback: SavedModel, second: SavedModel | None, tok,
            mesh_shape, *, batch_size: int, **cot_kw) -> tuple[Sampler, Sampler | None,
                                                               FeedbackModel]:
  """The policy's and second policy's samplers and the feedback model, on one mesh (a
  feedback model that is the policy shares its parameters and tokenizer; another one
  reads the comparisons with its own tokenizer)."""
  mesh = processes.local_mesh(mesh_shape)
  sampler = Sampler(*policy.load(mesh=mesh), mesh=mesh)
  same = feedback.path == policy.path
  judge_sampler = sampler if same else Sampler(*feedback.load(mesh=mesh), mesh=mesh)
  judge_tok = tok if same else feedback.tokenizer()
  second_sampler = None if second is None else Sampler(*second.load(mesh=mesh), mesh=mesh)
  return sampler, second_sampler, FeedbackModel(judge_sampler, judge_tok,
                                                batch_size=batch_size, **cot_kw)


@gin.configurable
@program("label_preferences",
         inputs=("policy_model", "prompts_path", "constitution_path", "feedback_model",
                 "second_policy_model", "tokenizer_path", "helpful_data"),
         cosmetic=COSMETIC + _PROBE_ARGS, marks_done=True, checks_extra=_PROBE_CHECKS)
def label_preferences(workdir: str, *, policy_model: str = gin.REQUIRED,
                      prompts_path: str | Sequence[str] = gin.REQUIRED,
                      constitution_path: str = gin.REQUIRED,
                      feedback_model: str | None = None, second_policy_model: str | None = None,
                      tokenizer_path: str | None = None, num_principles: int = 1,
                      swap_orders: bool = True, chain_of_thought: bool = False,
                      clamp: Any = "paper", exemplars: bool | int = True,
                      max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                      cot_max_new_tokens: int = 96, cot_temperature: float = 0.0,
                      helpful_data: str | None = None, max_helpful: int | None = None,
                      eval_fraction: float = 0.1, seed: int = 0, shard_size: int = 256,
                      batch_size: int = 64, max_prompts: int | None = None,
                      max_shards: int | None = None, mesh_shape: tuple[int, int, int] = (-1, 1, 1),
                      injection_probe: int = 0, injection_text: str = INJECTION_TEXT) -> str:
  """Writes the AI-labelled pair set; returns its folder ``{workdir}/records/pref_data``.

  Args:
    workdir: output folder (``shards/``, ``records/``, diagnostics, ``DONE``).
    policy_model: the model whose answers are compared (the SL-CAI model).
    prompts_path: JSONL of prompts (``{"prompt": ...}`` or ``{"text": HH}``, opt. ``id``),
      or several such files, pooled in order (e.g. red-team and helpfulness prompts);
      ``max_prompts`` then applies to each file.
    constitution_path: the constitution whose comparison principles are used.
    feedback_model: the feedback (judge) model; default: ``policy_model``. Another model
      (e.g. a base model of another family) reads the comparisons with its own tokenizer.
    second_policy_model: if set, each pair is one answer of the policy and one of this
      model (e.g. the helpful-only base model, so pairs contrast harmful and harmless
      answers); ``flags`` record which answer came from where. Not in Bai et al. (both
      answers come from the SL-CAI model there).
    tokenizer_path: default: the policy's tokenizer.
    num_principles: principles per label (> 1: the paper's principle ensemble).
    swap_orders: score both answer orders and average them.
    chain_of_thought: the judge writes its reasoning before it is scored.
    clamp: band CoT probabilities are clamped to: "paper" (0.4, 0.6), a (lo, hi) pair,
      or None; a band without chain of thought is an error.
    exemplars: prepend the constitution's few-shot comparison exemplars (True: all; a
      number: the first that many; False or 0: none).
    max_new_tokens, temperature, top_p: sampling of the two answers.
    cot_max_new_tokens, cot_temperature: sampling of the judge's reasoning.
    helpful_data: optional chosen/rejected JSONL of helpfulness pairs mixed in as they are
      (``source = "helpful"``); ``max_helpful`` caps how many.
    eval_fraction: share of pairs (by a hash of the prompt index) held out as ``eval``.
    seed: principle draws, sampler keys and the split all derive from it.
    shard_size: prompts per resumable shard; batch_size: prompts per sampler call.
    max_prompts: use only the first prompts; max_shards: stop after this many new shards.
    mesh_shape: (data, fsdp, tensor); the batch is sharded over data x fsdp.
    injection_probe, injection_text: judge robustness (module docstring): pairs judged
      again with the text appended to one answer (0: off; not part of the identity).
  """
  out_path = paths.join(workdir, "records", PREF_DATA)
  if workdir_lib.skip_if_done(workdir, "label_preferences"):
    return out_path
  clamp = resolve_clamp(clamp, chain_of_thought)

  # --- Inputs, models, the job's spec ---------------------------------------------------
  const = cc.load_constitution(cc.resolve_constitution_path(constitution_path))
  files = _prompt_files(prompts_path)
  prompts = [row for p in files for row in read_prompts(p)[:max_prompts]]
  policy, feedback, second = _open_models(policy_model, feedback_model, second_policy_model)
  tok = policy.tokenizer(tokenizer_path)
  spec = _job_spec(policy, feedback, second, files, prompts, const, dict(
      num_principles=num_principles, swap_orders=swap_orders,
      chain_of_thought=chain_of_thought, clamp=list(clamp) if clamp else None,
      exemplars=exemplars, max_new_tokens=max_new_tokens, temperature=temperature,
      top_p=top_p, cot_max_new_tokens=cot_max_new_tokens, cot_temperature=cot_temperature,
      seed=seed, shard_size=shard_size, batch_size=batch_size))
  shards, todo = open_shards(paths.join(workdir, SHARDS_DIR), spec, len(prompts),
                             shard_size, "label_preferences")
  _log.info("label_preferences: %d prompts, %d shards, %d to do", len(prompts),
            shards.num_shards, len(todo))

  # --- Label the unfinished shards (this process's share of them) ------------------------
  mine = processes.share(todo[:max_shards])   # max_shards: stop after that many shards
  timing = {"generation_s": 0.0, "judge_s": 0.0, "pairs": 0}
  load = functools.partial(
      _models, policy, feedback, second, tok, mesh_shape,
      batch_size=batch_size * (2 if swap_orders else 1), chain_of_thought=chain_of_thought,
      cot_max_new_tokens=cot_max_new_tokens, cot_temperature=cot_temperature)
  judge_kw = dict(principle_seed=seed, num_principles=num_principles, swap_orders=swap_orders,
                  clamp=clamp, exemplars=cc.first_exemplars(const.comparison_exemplars, exemplars))
  loaded = load() if mine else None
  if mine:
    _label_shards(
        shards, mine, prompts, *loaded, tok, const, seed=seed, batch_size=batch_size,
        timing=timing, **judge_kw,
        sample_kw=dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p))
  processes.barrier("label_preferences:shards")   # every process's shards are written
  if shards.todo() or not processes.is_chief():   # max_shards left some: no data set yet
    return out_path
  probe = _injection_probe((loaded or load())[2], prompts, const, injection_probe,
                           injection_text, **judge_kw) if injection_probe else None
  return _write_pref_data(workdir, shards, spec=spec, const=const, num_prompts=len(prompts),
                          helpful_data=helpful_data, max_helpful=max_helpful,
                          prompts_path=prompts_path, eval_fraction=eval_fraction,
                          timing=timing, probe=probe)
