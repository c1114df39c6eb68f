"""The toy world as pipeline phases: a data source (corpus, tokenizer, prompt sets).

``toy_data`` writes, in its workdir:

* ``corpus.jsonl``: the helpful-only base corpus (``corpus.py``) as conversations;
* ``tokenizer.model``: a sentencepiece model trained on it;
* ``red_team.jsonl`` / ``helpful.jsonl``: train-split harmful and benign requests
  (the prompts the CAI phases use), ``red_team_rl.jsonl``: more train-split harmful
  requests, drawn separately (the RL phases' red-team prompts, which the SL-CAI phase has
  not seen), ``eval.jsonl``: held-out requests; every line is a
  prompt row (``{"id", "prompt", "category"}``) plus the request's ground truth, which
  only the evaluator reads (``read_requests``);
* ``feedback.jsonl``: comparison exercises for the feedback model of its own
  (``toy_feedback``; ``corpus.build_feedback_corpus``);
* ``manifest.json``: the configuration, counts and the constitution hash;
* ``records/``: the same corpus and prompt sets as versioned ArrayRecord data sets
  (``toy_corpus``: split train; ``toy_prompts``: splits red_team, red_team_rl, helpful,
  eval), read
  with ``cai_jax.data.records.read_records`` / grain.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
from typing import Callable

import gin
import sentencepiece as spm
import tqdm

from cai_jax.constitution import load_constitution, resolve_constitution_path
from cai_jax.data.conversations import write_conversations
from cai_jax.data.builders import (dialogue_example, dialogue_features, prompt_features,
                                   write_records)
from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn, render
from cai_jax.data.records import sha256_file
from cai_jax.data.tokenizer import train_tokenizer
from cai_jax.models.config import ModelConfig
from cai_jax.models.store import SavedModel
from cai_jax.toyworld import generator
from cai_jax.toyworld.corpus import CorpusConfig, build_corpus, build_feedback_corpus
from cai_jax.run import program

_log = logging.getLogger(__name__)
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_repo_path(path: str) -> str | None:
  """``path`` if it exists (relative to the cwd), else relative to the repository root."""
  for candidate in (path, os.path.join(_REPO, path)):
    if os.path.exists(candidate):
      return os.path.abspath(candidate)
  return None


def write_requests(path: str, requests) -> None:
  """Writes requests as prompt rows (the request's text as ``prompt``) with their truth."""
  with open(path, "w", encoding="utf-8") as f:
    for i, r in enumerate(requests):
      truth = {k: v for k, v in r.to_dict().items() if k != "text"}
      f.write(json.dumps({"id": i, "prompt": r.text, **truth}) + "\n")


def read_requests(path: str) -> list[generator.Request]:
  """Reads requests written by ``toy_data`` (with their ground truth)."""
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      row.pop("id", None)
      row["text"] = row.pop("prompt")
      out.append(generator.Request.from_dict(row))
  return out


def blind_spot_of(data_dir: str) -> str | None:
  """The blind-spot category of the corpus ``toy_data`` wrote in ``data_dir``."""
  with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
    return json.load(f)["corpus"]["blind_spot"]


def _write_record_sets(workdir: str, convs, constitution_hash: str) -> None:
  records_dir = os.path.join(workdir, "records")
  provenance = {"generator": "cai_jax.toyworld", "constitution_hash": constitution_hash}
  write_records("toy_corpus", {"train": [dialogue_example(c, str(i)) for i, c in
                                         enumerate(convs)]},
                dialogue_features(), records_dir, provenance=provenance, overwrite=True)
  splits = {}
  for split in ("red_team", "red_team_rl", "helpful", "eval"):
    splits[split] = [{"id": str(r.get("id")), "prompt": render([Turn(HUMAN, r["prompt"])]),
                      "category": r["category"]}
                     for r in _read_rows(os.path.join(workdir, f"{split}.jsonl"))]
  write_records("toy_prompts", splits, prompt_features(), records_dir, provenance=provenance,
                overwrite=True)


def _read_rows(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@gin.configurable
@program("toy_data",
         inputs=("constitution_path",))
def toy_data(workdir: str, *, seed: int = 0, n_dialogues: int = 6000, n_critique: int = 4000,
             n_comparison: int = 4000, blind_spot: str | None = "privacy",
             critique_error_rate: float = 0.1, judge_noise: float = 0.1,
             judge_bias: float = 0.3, cot_fraction: float = 0.3,
             vocab_size: int = 1536, n_red_team: int = 2000, n_helpful: int = 2000,
             n_red_team_rl: int = 1000, n_eval: int = 400, n_feedback: int = 16000,
             constitution_path: str = "constitutions/toy.json",
             eval_seed: int | None = None) -> str:
  """Writes the toy world's corpus, tokenizer and prompt sets; returns ``workdir``.

  ``eval_seed`` draws the held-out evaluation requests (``eval.jsonl``) from another stream
  than ``seed`` (default: ``seed``), e.g. a fresh draw after the old one was read while
  the recipe was designed; the corpus, the tokenizer and the training prompts do not move.
  """
  os.makedirs(workdir, exist_ok=True)
  cfg = CorpusConfig(seed=seed, n_dialogues=n_dialogues, n_critique=n_critique,
                     n_comparison=n_comparison, blind_spot=blind_spot,
                     critique_error_rate=critique_error_rate, judge_noise=judge_noise,
                     judge_bias=judge_bias, cot_fraction=cot_fraction)
  constitution = load_constitution(resolve_constitution_path(constitution_path))
  total = n_dialogues + n_critique + n_comparison
  convs = list(tqdm.tqdm(build_corpus(cfg, constitution), total=total, desc="toy corpus",
                         unit="conv", mininterval=1.0, disable=None))
  corpus_path = os.path.join(workdir, "corpus.jsonl")
  write_conversations(corpus_path, convs)
  tok = train_tokenizer((render(c) for c in convs), model_prefix=os.path.join(workdir, "tokenizer"),
                        vocab_size=vocab_size)
  write_conversations(os.path.join(workdir, "feedback.jsonl"),
                      list(build_feedback_corpus(cfg, constitution, n_feedback)))
  write_requests(os.path.join(workdir, "red_team.jsonl"),
                  generator.make_requests(seed, n_red_team, "train", harmful=True))
  write_requests(os.path.join(workdir, "red_team_rl.jsonl"),
                  generator.make_requests(seed + 2, n_red_team_rl, "train", harmful=True))
  write_requests(os.path.join(workdir, "helpful.jsonl"),
                  generator.make_requests(seed + 1, n_helpful, "train", harmful=False))
  write_requests(os.path.join(workdir, "eval.jsonl"),
                  generator.make_requests(seed if eval_seed is None else eval_seed, n_eval,
                                          "eval", balanced=True))
  _write_record_sets(workdir, convs, constitution.content_hash)
  manifest = {"corpus": dataclasses.asdict(cfg), "vocab_size": tok.vocab_size,
              "constitution": constitution_path,
              "constitution_hash": constitution.content_hash, "conversations": len(convs),
              "n_red_team": n_red_team, "n_red_team_rl": n_red_team_rl, "n_helpful": n_helpful,
              "n_eval": n_eval, "eval_seed": seed if eval_seed is None else eval_seed,
              "n_feedback": n_feedback}
  with open(os.path.join(workdir, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
  _log.info("toy_data: %d conversations, vocab %d", len(convs), tok.vocab_size)
  return workdir


def _tokenizer_fingerprint(path: str) -> str:
  sp = spm.SentencePieceProcessor(model_file=path)
  pieces = "\n".join(sp.id_to_piece(i) for i in range(sp.get_piece_size()))
  return hashlib.sha256(pieces.encode()).hexdigest()


def data_fingerprint(data_dir: str, files: tuple[str, ...] = ("corpus.jsonl",)
                     ) -> dict[str, str]:
  """What a toy model was trained on: the hash of each training file (``corpus.jsonl`` ->
  ``corpus_sha256``) and of the tokenizer's pieces."""
  out = {f"{os.path.splitext(f)[0]}_sha256": sha256_file(os.path.join(data_dir, f))
         for f in files}
  out["tokenizer_sha256"] = _tokenizer_fingerprint(os.path.join(data_dir, "tokenizer.model"))
  return out


def _committed_or_trained(workdir: str, name: str, fingerprint: dict[str, str],
                          pretrained: str | None, data_dir: str,
                          train: Callable[[], str],
                          model_config: ModelConfig | None = None) -> str:
  """The committed checkpoint ``pretrained`` copied to ``workdir/model`` if its
  ``model.json`` carries exactly ``fingerprint`` (and ``model_config``, when given: another
  model size trains anew); else ``train()``'s model, stamped with it."""
  out = os.path.join(workdir, "model")
  if pretrained:
    src = resolve_repo_path(pretrained)
    if src and SavedModel.exists(src):
      saved = SavedModel.open(src)
      if model_config is not None and saved.config != model_config:
        _log.warning("%s: %s has another model configuration; training anew", name, src)
      elif all(saved.info.get(k) == v for k, v in fingerprint.items()):
        _log.info("%s: using the committed model %s (same training data)", name, src)
        shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))
        SavedModel.open(out).update_info({"tokenizer_path": os.path.abspath(
            os.path.join(data_dir, "tokenizer.model")), "copied_from": src})
        return out
      _log.warning("%s: %s was trained on other data; training anew", name, src)
  out = train()
  SavedModel.open(out).update_info(fingerprint)
  return out


@gin.configurable
@program("toy_base",
         inputs=("data_dir", "pretrained?"))
def toy_base(workdir: str, *, train: Callable = gin.REQUIRED, data_dir: str = "data",
             pretrained: str | None = "checkpoints/toy_base",
             model_config: ModelConfig | None = None) -> str:
  """The helpful-only base model: the committed checkpoint if it was trained on exactly
  this corpus and tokenizer (and has ``model_config``, when given: a sweep over model sizes
  trains the other sizes), else trained here with ``train`` (an SFT program).

  Returns the saved model folder (``workdir/model``).
  """
  return _committed_or_trained(workdir, "toy_base", data_fingerprint(data_dir), pretrained,
                               data_dir, lambda: train(workdir=workdir), model_config)


@gin.configurable
@program("toy_feedback",
         inputs=("data_dir", "init_model", "pretrained?"))
def toy_feedback(workdir: str, *, train: Callable = gin.REQUIRED, init_model: str = gin.REQUIRED,
                 data_dir: str = "data",
                 pretrained: str | None = "checkpoints/toy_feedback") -> str:
  """The feedback model of its own: ``init_model`` (the helpful-only base model) fine-tuned
  with ``train`` (an SFT program) on the world's comparison exercises (``feedback.jsonl``),
  or the committed checkpoint if it was made from exactly these files and this base model.

  The paper's feedback model is a separate pretrained LM prompted with the comparison; the
  toy base model has seen too few comparisons to judge (its option probabilities barely
  move with the answers), so the toy feedback model is that base model after a judging
  course. Returns the saved model folder (``workdir/model``).
  """
  fingerprint = data_fingerprint(data_dir, ("corpus.jsonl", "feedback.jsonl"))
  fingerprint["init_manifest_sha256"] = sha256_file(os.path.join(init_model, "manifest.json"))
  return _committed_or_trained(
      workdir, "toy_feedback", fingerprint, pretrained, data_dir,
      lambda: train(workdir=workdir, init_model=init_model,
                    train_data=os.path.join(data_dir, "feedback.jsonl")))


@gin.configurable
@program("toy_helpful_pairs",
         inputs=("data_dir",))
def toy_helpful_pairs(workdir: str, *, data_dir: str = "data", n: int = 512,
                      seed: int = 0) -> str:
  """Helpfulness comparisons with ground-truth labels, the toy stand-in for the paper's
  human helpfulness labels: for benign requests of ``helpful.jsonl``, a complying answer
  is chosen over a refusal (flat, or explained as if the request were harmful), a partial
  or an off-topic one (``p_chosen`` 1): a crowdworker asking for help ranks any answer
  that withholds it below the help, however politely it declines.

  Writes ``{workdir}/helpful_pairs.jsonl`` (chosen/rejected, public format); returns it.
  """
  rng = random.Random(seed)
  requests = read_requests(os.path.join(data_dir, "helpful.jsonl"))[:n]
  os.makedirs(workdir, exist_ok=True)
  out = os.path.join(workdir, "helpful_pairs.jsonl")
  with open(out, "w", encoding="utf-8") as f:
    for i, r in enumerate(requests):
      bad = rng.choice(("refuse_flat", "refuse_explain", "partial", "off_topic"))
      conv = lambda style: render([Turn(HUMAN, r.text),  # noqa: E731
                                   Turn(ASSISTANT, generator.respond(r, style, rng))])
      f.write(json.dumps({"id": f"h{i}", "chosen": conv("comply"), "rejected": conv(bad),
                          "p_chosen": 1.0}) + "\n")
  _log.info("toy_helpful_pairs: %d pairs -> %s", len(requests), out)
  return out
