"""SL-CAI data generation: initial answer, then N x (principle -> critique -> revision).

For every prompt (Bai et al. 2022, Sec. 3.1 and Algorithm 1): sample an initial answer,
then ``num_rounds`` times draw a critique / revision principle (a pure function of
``(seed, prompt_index, round)``), ask for a critique and then a revision, in the few-shot
format of ``cai_jax.constitution.templates``. ``direct_revision=True`` is the paper's
ablation (no critique turns). Each row's KV cache is carried from turn to turn with the
sampler's ``continue_generation``: only the new template turns are prefilled.

Work happens in shards of ``shard_size`` prompts; each finished shard is written to
``{workdir}/shards/shard_NNNNN.jsonl`` (atomically) and a rerun skips finished shards, so
killing the program and running the same command again gives the same final data set as
an uninterrupted run. The final data set is the ArrayRecord set
``{workdir}/records/sl_data`` with every intermediate, flags for malformed generations, and
provenance (constitution hash, source model, gin operative config).

``sl_conversations`` turns that data set into the SFT conversations JSONL (Human prompt +
Assistant final revision), mixed with helpfulness conversations.

  python -m cai_jax.main --gin_file=runs/generate_sl.gin --workdir=/tmp/gen \
      --gin_param="generate_sl.model_dir='/tmp/base/model'" \
      --gin_param="generate_sl.prompts_path='/tmp/data/red_team.jsonl'"
"""
from __future__ import annotations

import dataclasses
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
from cai_jax.data.builders import write_records
from cai_jax.data.conversations import read_conversations, write_conversations
from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn, parse_hh, render
from cai_jax.data.records import read_rows, sha256_file
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import load_model
from cai_jax.programs import common
from cai_jax.sampling import Sampler

_log = logging.getLogger(__name__)

DATASET_NAME = "sl_data"
SHARDS_DIR = "shards"


def sl_features() -> tfds.features.FeaturesDict:
  """One prompt's SL-CAI chain; ``critiques`` is empty for direct revision."""
  text, seq = tfds.features.Text(), tfds.features.Sequence
  return tfds.features.FeaturesDict({
      "index": tfds.features.Scalar(np.int64), "id": text, "prompt": text,
      "initial": text, "principle_ids": seq(text), "rounds": seq(np.int32),
      "critiques": seq(text), "revisions": seq(text), "final": text,
      "flags": seq(text), "malformed": tfds.features.Scalar(np.bool_),
      "num_generated_tokens": tfds.features.Scalar(np.int64),
      "fallbacks": tfds.features.Scalar(np.int32)})


def read_prompts(path: str) -> list[tuple[str, tuple[Turn, ...]]]:
  """(id, request turns) per line of a JSONL: ``{"prompt": str}`` or ``{"text": HH}``.

  The id is the line's ``"id"`` if given, else its position.
  """
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      if isinstance(row.get("prompt"), str):
        turns = (Turn(HUMAN, row["prompt"].strip()),)
      elif isinstance(row.get("text"), str):
        turns = tuple(parse_hh(row["text"]))
        if turns and turns[-1] == Turn(ASSISTANT, ""):
          turns = turns[:-1]
      else:
        raise ValueError(f"{path}:{lineno}: expected a 'prompt' or 'text' string field")
      out.append((str(row.get("id", len(out))), turns))
  if not out:
    raise ValueError(f"{path}: no prompts")
  return out


@dataclasses.dataclass
class _Chain:
  """One prompt's chain while it is generated."""

  index: int
  id: str
  request: tuple[Turn, ...]
  principles: list[cc.CritiquePrinciple]
  conversation: tuple[Turn, ...] = ()
  texts: dict[str, str] = dataclasses.field(default_factory=dict)
  flags: list[str] = dataclasses.field(default_factory=list)
  num_tokens: int = 0
  fallbacks: int = 0
  cached: list[int] | None = None   # ids in this row's live cache (last one pending)

  def example(self, prompt_text: str, num_rounds: int, direct: bool) -> dict[str, Any]:
    revisions = [self.texts[f"revision.{r}"] for r in range(num_rounds)]
    return {"index": self.index, "id": self.id, "prompt": prompt_text,
            "initial": self.texts["initial"],
            "principle_ids": [p.id for p in self.principles], "rounds": list(range(num_rounds)),
            "critiques": [] if direct else [self.texts[f"critique.{r}"]
                                            for r in range(num_rounds)],
            "revisions": revisions, "final": revisions[-1] if revisions else
            self.texts["initial"], "flags": list(self.flags), "malformed": bool(self.flags),
            "num_generated_tokens": self.num_tokens, "fallbacks": self.fallbacks}


def _steps(num_rounds: int, direct: bool) -> list[tuple[str, int]]:
  """The generation steps of a chain: ("initial", -1), then per round its turns."""
  per_round = ("revision",) if direct else ("critique", "revision")
  return [("initial", -1)] + [(k, r) for r in range(num_rounds) for k in per_round]


def _step_prompt(chain: _Chain, kind: str, rnd: int, direct: bool,
                 exemplars: Sequence[cc.Exemplar]) -> cc.Prompt:
  if kind == "initial":
    return cc.initial_prompt(chain.request)
  p = chain.principles[rnd]
  if kind == "critique":
    return cc.critique_prompt(chain.conversation, p, exemplars)
  if direct:
    return cc.direct_revision_prompt(chain.conversation, p, exemplars)
  return cc.revision_prompt(chain.conversation, p, exemplars)


def _run_step(sampler: Sampler, conv, chains: list[_Chain], targets: list[list[int]], *,
              eos: int, planned_fresh: bool, prefix_reuse: bool, seed: int, **kw):
  """Samples one turn for every chain; returns (tokens per chain, live conversation).

  Rows whose cached ids are a prefix of their target continue the live cache with only
  the difference; other rows are prefilled afresh (counted as fallbacks unless the step
  is a planned restart) and stay fresh-prefilled for the rest of the chain.
  """
  live = [conv is not None and prefix_reuse and c.cached is not None
          and t[:len(c.cached)] == c.cached and len(t) > len(c.cached)
          for c, t in zip(chains, targets)]
  tokens: list[list[int] | None] = [None] * len(chains)
  if any(live):
    extra = [t[len(c.cached):] if ok else [eos] for c, t, ok in zip(chains, targets, live)]
    out = sampler.continue_generation(conv, extra, seed=seed, keep_state=True, **kw)
    conv = out.conversation
    for i, ok in enumerate(live):
      if ok:
        tokens[i] = out.tokens[i]
        chains[i].cached = targets[i] + out.tokens[i]
  fresh = [i for i, ok in enumerate(live) if not ok]
  if fresh:
    whole = len(fresh) == len(chains)   # a full restart keeps the new cache
    out = sampler.generate([targets[i] for i in fresh], seed=common.call_seed(seed, "fresh"),
                           keep_state=whole and prefix_reuse, **kw)
    conv = out.conversation if whole else conv
    for j, i in enumerate(fresh):
      tokens[i] = out.tokens[j]
      chains[i].cached = targets[i] + out.tokens[j] if whole else None
      chains[i].fallbacks += int(prefix_reuse and not planned_fresh)
  return tokens, conv


def _generate_batch(sampler: Sampler, tok: Tokenizer, chains: list[_Chain], *,
                    num_rounds: int, direct: bool, exemplars: Sequence[cc.Exemplar],
                    prefix_reuse: bool, seed: int, **kw) -> int:
  """Runs every step of a batch of chains in place; returns generated tokens."""
  conv, total = None, 0
  for s, (kind, rnd) in enumerate(_steps(num_rounds, direct)):
    prompts = [_step_prompt(c, kind, rnd, direct, exemplars) for c in chains]
    targets = [p.token_ids(tok) for p in prompts]
    planned = s == 0 or (s == 1 and bool(exemplars))   # exemplars precede turn 1 on
    tokens, conv = _run_step(sampler, conv, chains, targets, eos=tok.eos_id,
                             planned_fresh=planned, prefix_reuse=prefix_reuse,
                             seed=common.call_seed(seed, s), **kw)
    name = kind if kind == "initial" else f"{kind}.{rnd}"
    for c, p, t in zip(chains, prompts, tokens):
      text = tok.decode_body(t).strip()
      c.texts[name] = text
      c.conversation = p.conversation(text)
      c.num_tokens += len(t)
      if tok.eos_id not in t:
        c.flags.append(f"{name}:truncated")
      if not text:
        c.flags.append(f"{name}:empty")
    total += sum(map(len, tokens))
  return total


@gin.configurable
def generate_sl(workdir: str, *, model_dir: str = gin.REQUIRED,
                prompts_path: str = gin.REQUIRED, constitution_path: str = gin.REQUIRED,
                tokenizer_path: str | None = None, num_rounds: int = 4,
                direct_revision: bool = False, exemplars: bool = True,
                max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                seed: int = 0, shard_size: int = 256, batch_size: int = 64,
                max_prompts: int | None = None, max_shards: int | None = None,
                prefix_reuse: bool = True, mesh_shape: tuple[int, int, int] = (-1, 1, 1)
                ) -> str:
  """Generates the SL-CAI data set; returns its folder ``{workdir}/records/sl_data``.

  Args:
    workdir: output folder (``shards/``, ``records/``, ``DONE``).
    model_dir: the base model (``models.store.save_model`` folder).
    prompts_path: JSONL of prompts (``{"prompt": ...}`` or ``{"text": HH}``, opt. "id").
    constitution_path: constitution JSON (see constitutions/README.md).
    tokenizer_path: sentencepiece model; default: the model's ``info["tokenizer_path"]``.
    num_rounds: critique -> revision rounds (0: initial answers only).
    direct_revision: revise without critiques (the paper's ablation).
    exemplars: prepend the constitution's few-shot critique exemplars.
    max_new_tokens, temperature, top_p: sampling of every turn.
    seed: principle draws depend on ``(seed, prompt index, round)``; sampler keys on
      ``(seed, shard, batch, step)``; same arguments give the same data set.
    shard_size: prompts per resumable shard; batch_size: prompts per sampler call.
    max_prompts: use only the first prompts (smoke runs).
    max_shards: stop after writing this many new shards (no final data set).
    prefix_reuse: carry the KV cache between turns (False: re-prefill every turn).
    mesh_shape: (data, fsdp, tensor); the batch is sharded over data x fsdp.
  """
  records_dir = os.path.join(workdir, "records")
  out_path = os.path.join(records_dir, DATASET_NAME)
  if common.is_done(workdir):
    _log.info("generate_sl: %s is complete, skipping", workdir)
    return out_path
  if num_rounds < 0 or shard_size < 1 or batch_size < 1:
    raise ValueError("need num_rounds >= 0, shard_size >= 1 and batch_size >= 1")

  # --- Prompts, constitution, spec ---------------------------------------------
  const = cc.load_constitution(cc.resolve_constitution_path(constitution_path))
  prompts = read_prompts(prompts_path)[:max_prompts]
  spec = {"model_dir": os.path.abspath(model_dir), "prompts_sha256": sha256_file(prompts_path),
          "num_prompts": len(prompts), "constitution_hash": const.content_hash,
          "num_rounds": num_rounds, "direct_revision": direct_revision,
          "exemplars": exemplars, "max_new_tokens": max_new_tokens,
          "temperature": temperature, "top_p": top_p, "seed": seed,
          "shard_size": shard_size, "batch_size": batch_size, "prefix_reuse": prefix_reuse}
  shards = common.Shards.open(os.path.join(workdir, SHARDS_DIR), spec, len(prompts),
                              shard_size)
  todo = shards.todo()
  _log.info("generate_sl: %d prompts, %d shards, %d to do", len(prompts), shards.num_shards,
            len(todo))

  # --- Mesh, model, sampler ----------------------------------------------------
  if todo:
    mesh = common.build_mesh(mesh_shape)
    _, graphdef, params, info = load_model(model_dir, mesh=mesh)
    tok = Tokenizer.load(tokenizer_path or info["tokenizer_path"])
    sampler = Sampler(graphdef, params, mesh=mesh)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
              stop_tokens=[tok.eos_id])
  ex = const.critique_exemplars if exemplars else ()

  # --- Loop over unfinished shards ---------------------------------------------
  left = sum(len(shards.items(s)) for s in todo)
  bar = tqdm.tqdm(total=len(prompts), initial=len(prompts) - left, desc="generate_sl",
                  unit="prompt", mininterval=1.0, disable=None)
  t0, new_tokens = time.perf_counter(), 0
  for n_new, s in enumerate(todo):
    if max_shards is not None and n_new >= max_shards:
      _log.info("generate_sl: stopping after %d new shards (max_shards)", n_new)
      bar.close()
      return out_path
    chains = [_Chain(i, *prompts[i], cc.sample_critique_principles(
        const, seed=seed, prompt_index=i, num_rounds=num_rounds)) for i in shards.items(s)]
    for b in range(0, len(chains), batch_size):
      batch = chains[b:b + batch_size]
      new_tokens += _generate_batch(sampler, tok, batch, num_rounds=num_rounds,
                                    direct=direct_revision, exemplars=ex,
                                    prefix_reuse=prefix_reuse, seed=common.call_seed(seed, s, b),
                                    **kw)
      bar.update(len(batch))
      bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - t0):.0f}")
    shards.write(s, [c.example(render(c.request), num_rounds,
                                                 direct_revision) for c in chains])
  bar.close()

  # --- Gather shards, write the record set -------------------------------------
  rows = shards.read_all()
  if [r["index"] for r in rows] != list(range(len(prompts))):
    raise RuntimeError(f"shards in {shards.directory} do not cover the prompts exactly once")
  n_bad = sum(r["malformed"] for r in rows)
  n_fallback = sum(r["fallbacks"] for r in rows)
  _log.info("generate_sl: %d chains, %d malformed, %d fresh-prefill fallbacks",
            len(rows), n_bad, n_fallback)
  provenance = {"program": "generate_sl", "constitution_hash": const.content_hash,
                "constitution_name": const.name, "model_dir": os.path.abspath(model_dir),
                "prompts_path": os.path.abspath(prompts_path), "spec": spec,
                "num_malformed": n_bad, "num_fallbacks": n_fallback,
                "gin_operative_config": gin.operative_config_str()}
  write_records(DATASET_NAME, {"train": rows}, sl_features(), records_dir,
                provenance=provenance, sources=[os.path.abspath(prompts_path)],
                overwrite=True)
  common.mark_done(workdir, f"{len(rows)} prompts\n")
  return out_path


def read_sl_data(path: str) -> list[dict[str, Any]]:
  """Rows of an ``sl_data`` record set: ``DATA_DIR/NAME`` or a generate_sl workdir."""
  return read_rows(path, DATASET_NAME, "train")


@gin.configurable
def sl_conversations(workdir: str, *, sl_data: str = gin.REQUIRED,
                     helpful_data: str | None = None, helpful_ratio: float = 1.0,
                     skip_malformed: bool = True, seed: int = 0) -> str:
  """Writes ``{workdir}/sl_conversations.jsonl``: SFT data for the SL-CAI model.

  Each red-team chain becomes ``(Human prompt, Assistant final revision)``
  (``revised_dialogue``); helpfulness conversations are mixed in, shuffled with ``seed``.

  Args:
    workdir: output folder.
    sl_data: a ``generate_sl`` workdir or its record set folder.
    helpful_data: a conversations JSONL (``.jsonl``), or a ``generate_sl`` output run on
      helpful prompts (usually with ``num_rounds=0``) whose *initial* answers (the base
      model's own) are used; None for no helpfulness data.
    helpful_ratio: helpful conversations per red-team conversation (capped by supply).
    skip_malformed: leave out chains whose final answer is truncated or empty (and
      helpful rows whose initial answer is).
    seed: which helpful conversations are taken, and the shuffle.

  Returns:
    The JSONL path (``programs/sft.py``'s ``train_data``).
  """
  os.makedirs(workdir, exist_ok=True)
  out = os.path.join(workdir, "sl_conversations.jsonl")

  def final_ok(row: dict, name: str) -> bool:
    return not any(f.startswith(name + ":") for f in row["flags"])

  rows = read_sl_data(sl_data)
  red = []
  for r in rows:
    last = f"revision.{len(r['revisions']) - 1}" if r["revisions"] else "initial"
    if skip_malformed and not final_ok(r, last):
      continue
    red.append(list(cc.revised_dialogue(tuple(parse_hh(r["prompt"])) + (
        Turn(ASSISTANT, r["initial"]),) + tuple(Turn("Revision", t) for t in r["revisions"]))))
  helpful: list[list[Turn]] = []
  if helpful_data is not None:
    if helpful_data.endswith(".jsonl"):
      helpful = read_conversations(helpful_data)
    else:
      helpful = [list(parse_hh(r["prompt"])) + [Turn(ASSISTANT, r["initial"])]
                 for r in read_sl_data(helpful_data)
                 if not skip_malformed or final_ok(r, "initial")]
  rng = np.random.default_rng(seed)
  want = int(round(helpful_ratio * len(red)))
  if want > len(helpful):
    _log.warning("sl_conversations: %d helpful conversations wanted, %d available",
                 want, len(helpful))
  picked = [helpful[i] for i in sorted(rng.permutation(len(helpful))[:want])]
  mixed = red + picked
  order = rng.permutation(len(mixed))
  write_conversations(out, [mixed[i] for i in order])
  with open(os.path.join(workdir, "sl_conversations.json"), "w", encoding="utf-8") as f:
    json.dump({"red_team": len(red), "red_team_skipped": len(rows) - len(red),
               "helpful": len(picked), "total": len(mixed)}, f, indent=2)
  _log.info("sl_conversations: %d red-team + %d helpful -> %s", len(red), len(picked), out)
  return out
