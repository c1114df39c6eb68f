"""SL-CAI data generation: initial answer, then N x (principle -> critique -> revision).

For every prompt (Bai et al. 2022, Sec. 3.1 and Algorithm 1): sample an initial answer,
then ``num_rounds`` times draw a critique / revision principle (a pure function of
``(seed, prompt_index, round)``), ask for a critique and then a revision, in the few-shot
format of ``cai_jax.constitution.templates``. ``direct_revision=True`` is the paper's
ablation (no critique turns). Each row's KV cache is carried from turn to turn: only the
new template turns are prefilled. Chains run with continuous batching by default
(``sampling.run_jobs``: a row that finishes a turn goes on at once with its chain's next
turn or the next chain), or in static batches (``continuous=False``); each turn's tokens
are drawn with a seed of its own, so both give the same data set.

Work happens in shards of ``shard_size`` prompts; each finished shard is written to
``{workdir}/shards/shard_NNNNN.jsonl`` (atomically) and a rerun skips finished shards, so
killing the program and running the same command again gives the same final data set as
an uninterrupted run. The final data set is the ArrayRecord set
``{workdir}/records/sl_data`` with every intermediate, flags for malformed generations, and
provenance (constitution hash, source model, gin operative config).

``programs.sl_cai.conversations.sl_conversations`` turns that data set into the SFT
conversations JSONL (Human prompt + Assistant final revision), mixed with helpfulness
conversations.

  python -m cai_jax.main --gin_file=runs/generate_sl.gin --workdir=/tmp/gen \
      --gin_param="generate_sl.model='/tmp/base/model'" \
      --gin_param="generate_sl.prompts_path='/tmp/data/red_team.jsonl'"
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import gin
import tqdm

from cai_jax import constitution as cc
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.builders import write_records
from cai_jax.data.conversations import read_prompts
from cai_jax.data.dialogue import Turn, render
from cai_jax.data.generated import SL_DATA, sl_features
from cai_jax.data.records import sha256_file
from cai_jax.data.shards import Shards
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import SavedModel
from cai_jax.sampling import Sampler, call_seed
from cai_jax.sampling.continuous import Request, run_jobs
from cai_jax.sharding import processes
from cai_jax.sharding.processes import open_shards
from cai_jax.run import program
from cai_jax.train.metrics import log_samples
from cai_jax.run.runner import COSMETIC

_log = logging.getLogger(__name__)

SHARDS_DIR = "shards"


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


def _turn_seed(seed: int, chain: _Chain, step: int) -> int:
  """The seed of one turn of one chain: independent of batches, shards and scheduling."""
  return call_seed(seed, "turn", chain.index, step)


def _run_step(sampler: Sampler, conv, chains: list[_Chain], targets: list[list[int]], *,
              eos: int, planned_fresh: bool, prefix_reuse: bool, seed: int, step: int, **kw):
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
    out = sampler.continue_generation(conv, extra, keep_state=True, row_seeds=[
        _turn_seed(seed, c, step) for c in chains], **kw)
    conv = out.conversation
    for i, ok in enumerate(live):
      if ok:   # a row refilled from its last tokens (model length limit) no longer matches
        tokens[i] = out.tokens[i]
        chains[i].cached = targets[i] + out.tokens[i] if not out.dropped[i] else None
  fresh = [i for i, ok in enumerate(live) if not ok]
  if fresh:
    whole = len(fresh) == len(chains)   # a full restart keeps the new cache
    out = sampler.generate([targets[i] for i in fresh], keep_state=whole and prefix_reuse,
                           row_seeds=[_turn_seed(seed, chains[i], step) for i in fresh], **kw)
    conv = out.conversation if whole else conv
    for j, i in enumerate(fresh):
      tokens[i] = out.tokens[j]
      chains[i].cached = (targets[i] + out.tokens[j]
                          if whole and not out.dropped[j] else None)
      chains[i].fallbacks += int(prefix_reuse and not planned_fresh)
  return tokens, conv


def _generate_batch(sampler: Sampler, tok: Tokenizer, chains: list[_Chain], *,
                    num_rounds: int, direct: bool, exemplars: Sequence[cc.Exemplar],
                    prefix_reuse: bool, seed: int, context: str = "full", **kw) -> int:
  """Runs every step of a batch of chains in place; returns generated tokens."""
  conv, total = None, 0
  for s, (kind, rnd) in enumerate(_steps(num_rounds, direct)):
    turns = [_turn(c, s, kind, rnd, direct, exemplars, context, tok) for c in chains]
    tokens, conv = _run_step(sampler, conv, chains, [t[1] for t in turns], eos=tok.eos_id,
                             planned_fresh=turns[0][2], prefix_reuse=prefix_reuse,
                             seed=seed, step=s, **kw)
    for c, (prompt, _, _), t in zip(chains, turns, tokens):
      _record(c, kind, rnd, prompt, t, tok)
    total += sum(map(len, tokens))
  return total


def _turn(chain: _Chain, s: int, kind: str, rnd: int, direct: bool,
          exemplars: Sequence[cc.Exemplar], context: str, tok: Tokenizer
          ) -> tuple[cc.Prompt, list[int], bool]:
  """Step ``s`` of a chain: (its prompt, the prompt's token ids, whether the step is a
  planned fresh prefill rather than a continuation of the chain's cache)."""
  opens_round = rnd > 0 and kind == ("revision" if direct else "critique")
  if context == "latest" and opens_round:   # the latest revision becomes the answer
    chain.conversation = cc.revised_dialogue(chain.conversation)
  prompt = _step_prompt(chain, kind, rnd, direct, exemplars)
  planned = (s == 0 or (s == 1 and bool(exemplars))   # exemplars precede turn 1 on
             or (context == "latest" and opens_round))
  return prompt, prompt.token_ids(tok), planned


def _record(chain: _Chain, kind: str, rnd: int, prompt: cc.Prompt, tokens: list[int],
            tok: Tokenizer) -> None:
  """Stores a sampled turn in its chain (text, conversation, flags, token count)."""
  name = kind if kind == "initial" else f"{kind}.{rnd}"
  text = tok.decode_generated(tokens)
  chain.texts[name] = text
  chain.conversation = prompt.conversation(text)
  chain.num_tokens += len(tokens)
  if not set(tok.stop_ids) & set(tokens):
    chain.flags.append(f"{name}:truncated")
  if not text:
    chain.flags.append(f"{name}:empty")


def _chain_job(chain: _Chain, tok: Tokenizer, *, num_rounds: int, direct: bool,
               exemplars: Sequence[cc.Exemplar], context: str, prefix_reuse: bool,
               seed: int):
  """The chain as a ``continuous.run_jobs`` job: yields each turn's request."""
  for s, (kind, rnd) in enumerate(_steps(num_rounds, direct)):
    prompt, target, planned = _turn(chain, s, kind, rnd, direct, exemplars, context, tok)
    reply = yield Request(target, seed=_turn_seed(seed, chain, s), reuse=prefix_reuse)
    chain.fallbacks += int(prefix_reuse and not planned and not reply.continued)
    _record(chain, kind, rnd, prompt, reply.tokens, tok)
  return chain


def _chains(const: cc.Constitution, prompts: list, items, num_rounds: int,
            seed: int) -> list[_Chain]:
  return [_Chain(i, *prompts[i], cc.sample_critique_principles(
      const, seed=seed, prompt_index=i, num_rounds=num_rounds)) for i in items]


def _generate_shards(sampler: Sampler, tok: Tokenizer, const: cc.Constitution, prompts: list,
                     shards: Shards, todo: list[int], *, num_rounds: int, direct: bool,
                     exemplars, prefix_reuse: bool, seed: int, batch_size: int, bar,
                     context: str, continuous: bool, **kw) -> None:
  """Generates the chains of the ``todo`` shards and writes each shard once it is done.

  Continuous batching streams the chains of every shard through one pool of rows (a
  shard is written as soon as its last chain ends); static batching runs each shard in
  batches of ``batch_size`` chains.
  """
  counter = {"tokens": 0, "t0": time.perf_counter()}

  def progress(n: int) -> None:
    bar.update(n)
    bar.set_postfix(tok_s=f"{counter['tokens'] / (time.perf_counter() - counter['t0']):.0f}")

  examples = lambda chains: [c.example(render(c.request), num_rounds, direct) for c in chains]
  job_kw = dict(num_rounds=num_rounds, direct=direct, exemplars=exemplars, context=context,
                prefix_reuse=prefix_reuse, seed=seed)
  if continuous:
    by_shard = {s: _chains(const, prompts, shards.items(s), num_rounds, seed) for s in todo}
    left = {s: len(c) for s, c in by_shard.items()}
    owner = {c.index: s for s, chains in by_shard.items() for c in chains}

    def done(chain: _Chain) -> None:
      s = owner[chain.index]
      left[s] -= 1
      if not left[s]:   # every chain of the shard has ended
        shards.write(s, examples(by_shard[s]))
      counter["tokens"] += chain.num_tokens
      progress(1)

    jobs = (_chain_job(c, tok, **job_kw) for s in todo for c in by_shard[s])
    run_jobs(sampler, jobs, batch_size=batch_size, on_done=done, **kw)
    return
  for s in todo:
    chains = _chains(const, prompts, shards.items(s), num_rounds, seed)
    for b in range(0, len(chains), batch_size):
      batch = chains[b:b + batch_size]
      counter["tokens"] += _generate_batch(sampler, tok, batch, **job_kw, **kw)
      progress(len(batch))
    shards.write(s, examples(chains))


def _chain_markdown(row: dict) -> str:
  """One chain as Markdown for TensorBoard's text dashboard."""
  parts = [f"**Prompt**\n\n{row['prompt']}", f"**Initial answer**\n\n{row['initial']}"]
  for k, revision in enumerate(row["revisions"]):
    if k < len(row["critiques"]):
      parts.append(f"**Critique {k + 1}**\n\n{row['critiques'][k]}")
    parts.append(f"**Revision {k + 1}**\n\n{revision}")
  return "\n\n".join(parts)


def _write_sl_data(workdir: str, shards: Shards, num_prompts: int, const: cc.Constitution,
                   spec: dict, prompts_path: str) -> str:
  """Gathers the shards into the ``sl_data`` record set; returns its folder."""
  rows = shards.read_all()
  if [r["index"] for r in rows] != list(range(num_prompts)):
    raise RuntimeError(f"shards in {shards.directory} do not cover the prompts exactly once")
  n_bad = sum(r["malformed"] for r in rows)
  n_fallback = sum(r["fallbacks"] for r in rows)
  if rows and not any(r["final"].strip() for r in rows):
    raise RuntimeError(f"generate_sl: every one of the {len(rows)} chains ended in an empty "
                       f"answer ({n_bad} flagged malformed); the model writes nothing useful "
                       f"(check generate_sl.model and max_new_tokens; shards are in "
                       f"{shards.directory})")
  if n_bad > len(rows) // 2:
    _log.warning("generate_sl: %d of %d chains are malformed (truncated or empty turns); "
                 "sl_conversations leaves them out unless trim_truncated", n_bad, len(rows))
  _log.info("generate_sl: %d chains, %d malformed, %d fresh-prefill fallbacks",
            len(rows), n_bad, n_fallback)
  provenance = {"program": "generate_sl", "constitution_hash": const.content_hash,
                "constitution_name": const.name, "model": spec["model"],
                "prompts_path": paths.absolute(prompts_path), "spec": spec,
                "num_malformed": n_bad, "num_fallbacks": n_fallback,
                "gin_operative_config": gin.operative_config_str()}
  records_dir = paths.join(workdir, "records")
  write_records(SL_DATA, {"train": rows}, sl_features(), records_dir, provenance=provenance,
                sources=[paths.absolute(prompts_path)], overwrite=True)
  log_samples(workdir, "generate_sl/chain", [_chain_markdown(r) for r in rows[:8]])
  workdir_lib.mark_done(workdir, f"{len(rows)} prompts\n")
  return paths.join(records_dir, SL_DATA)


@gin.configurable
@program("generate_sl",
         inputs=("model", "prompts_path", "constitution_path", "tokenizer_path"),
         cosmetic=COSMETIC, marks_done=True)
def generate_sl(workdir: str, *, model: str = gin.REQUIRED, prompts_path: str = gin.REQUIRED,
                constitution_path: str = gin.REQUIRED, tokenizer_path: str | None = None,
                num_rounds: int = 4, direct_revision: bool = False, context: str = "full",
                exemplars: bool | int = True,
                max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                seed: int = 0, shard_size: int = 256, batch_size: int = 64,
                max_prompts: int | None = None, max_shards: int | None = None,
                prefix_reuse: bool = True, continuous: bool = True, mesh_shape: tuple[int, int, int] = (-1, 1, 1)
                ) -> str:
  """Generates the SL-CAI data set; returns its folder ``{workdir}/records/sl_data``.

  Args:
    workdir: output folder (``shards/``, ``records/``, ``DONE``).
    model: the base model (a saved model folder).
    prompts_path: JSONL of prompts (``{"prompt": ...}`` or ``{"text": HH}``, opt. "id").
    constitution_path: constitution JSON (see constitutions/README.md).
    tokenizer_path: default: the model's tokenizer.
    num_rounds: critique -> revision rounds (0: initial answers only).
    direct_revision: revise without critiques (the paper's ablation).
    context: what a later round sees. ``'full'`` (the paper's chain): every earlier turn,
      the KV cache carried along. ``'latest'``: the request and the latest revision as the
      assistant's answer, so every round is one critique -> revision exercise on the
      current answer and the chain's length stays bounded (for models whose context
      window the full chain outgrows; each round is prefilled afresh).
    exemplars: prepend the constitution's few-shot critique exemplars (True: all of them;
      a number: the first that many; False or 0: none).
    max_new_tokens, temperature, top_p: sampling of every turn.
    seed: principle draws depend on ``(seed, prompt index, round)``, each turn's tokens on
      ``(seed, prompt index, step)``; same arguments give the same data set.
    shard_size: prompts per resumable shard; batch_size: rows decoded together.
    max_prompts: use only the first prompts (smoke runs).
    max_shards: stop after writing this many new shards (no final data set).
    prefix_reuse: carry the KV cache between turns (False: re-prefill every turn).
    continuous: continuous batching (``sampling.continuous``): a row that finishes a turn
      goes on with its chain's next turn, or the next prompt's chain, while the others
      decode. False: static batches of ``batch_size`` chains that take every turn
      together. Both give the same chains (each turn's seed depends on its prompt index
      and step only); ``batch_size`` is the number of rows either way.
    mesh_shape: (data, fsdp, tensor); the batch is sharded over data x fsdp.
  """
  out_path = paths.join(workdir, "records", SL_DATA)
  if workdir_lib.skip_if_done(workdir, "generate_sl"):
    return out_path
  if num_rounds < 0 or shard_size < 1 or batch_size < 1:
    raise ValueError("need num_rounds >= 0, shard_size >= 1 and batch_size >= 1")
  if context not in ("full", "latest"):
    raise ValueError(f"generate_sl.context must be 'full' or 'latest', got {context!r}")

  # --- Inputs and the job's spec -------------------------------------------------------
  const = cc.load_constitution(cc.resolve_constitution_path(constitution_path))
  prompts_path = workdir_lib.resolve_input(prompts_path)
  prompts = read_prompts(prompts_path)[:max_prompts]
  saved = SavedModel.open(model, role="generate_sl.model")
  tok = saved.tokenizer(tokenizer_path)
  spec = {"model": saved.path, "prompts_sha256": sha256_file(prompts_path),
          "num_prompts": len(prompts), "constitution_hash": const.content_hash,
          "num_rounds": num_rounds, "direct_revision": direct_revision, "context": context,
          "exemplars": exemplars, "max_new_tokens": max_new_tokens,
          "temperature": temperature, "top_p": top_p, "seed": seed,
          "shard_size": shard_size, "batch_size": batch_size, "prefix_reuse": prefix_reuse,
          "continuous": continuous}
  shards, todo = open_shards(paths.join(workdir, SHARDS_DIR), spec, len(prompts),
                             shard_size, "generate_sl")
  _log.info("generate_sl: %d prompts, %d shards, %d to do", len(prompts), shards.num_shards,
            len(todo))

  # --- Generate the unfinished shards (this process's share of them) -------------------
  if max_shards is not None and len(todo) > max_shards:
    _log.info("generate_sl: writing %d of the %d shards to do (max_shards)", max_shards,
              len(todo))
  mine = processes.share(todo[:max_shards])
  if mine:
    mesh = processes.local_mesh(mesh_shape)
    sampler = Sampler(*saved.load(mesh=mesh), mesh=mesh)
  bar = tqdm.tqdm(total=sum(len(shards.items(s)) for s in mine), desc="generate_sl",
                  unit="prompt", mininterval=1.0, disable=None)
  if mine:
    _generate_shards(
        sampler, tok, const, prompts, shards, mine, num_rounds=num_rounds,
        direct=direct_revision, exemplars=cc.first_exemplars(const.critique_exemplars, exemplars),
        prefix_reuse=prefix_reuse, seed=seed, batch_size=batch_size, bar=bar, context=context,
        continuous=continuous, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, stop_tokens=tok.stop_ids)
  bar.close()
  processes.barrier("generate_sl:shards")   # every process's shards are written
  if shards.todo() or not processes.is_chief():   # max_shards left some: no data set yet
    return out_path
  return _write_sl_data(workdir, shards, len(prompts), const, spec, prompts_path)
