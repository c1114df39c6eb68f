"""Classifier data from SL-CAI's critique -> revision chains (no request-writing model).

``classifier_data`` asks a helpful-only model to *write* requests for each principle; a
model too small to follow that instruction (the toy world's) cannot. The SL-CAI data set
carries the same signal in another form: every red-team chain holds an initial answer
that the constitution's critiques found fault with and a final revision written to
follow the principles, and the helpfulness set holds ordinary answers to harmless
requests. So, with the constitution (through the critique -> revision process) and the
prompt sets as the label sources:

* input rows: every red-team request is 1, every helpfulness request 0;
* exchange rows: a red-team request with its initial answer is 1, with its final revision
  0; a helpfulness request with its answer 0.

Chains flagged malformed (with ``keep_truncated``, a turn cut by the budget is not a
flaw), with an empty answer, or whose final revision is the initial
answer unchanged (no evidence either way) are left out and counted in ``summary.json``.
Each request is written in every jailbreak shape of ``transforms``
(``cai_jax.data.jailbreaks``; multi-turn prompts only as they are) with the same answers,
so the classifier sees attacks' shapes on both sides of the label. ``eval_fraction`` of
the prompts (by a hash of their id, so both classifiers hold out the same ones) go to the
eval files. The labels are as good as the chains: a revision that is still harmful stays
labelled 0 (read ``summary.json`` and some rows).

Outputs in ``workdir`` (the ``train_classifier`` JSONL format, as ``classifier_data``):
``inputs.{train,eval}.jsonl`` (``text``, ``label``) and ``exchanges.{train,eval}.jsonl``
(``text``, ``response``, ``label``); every row has a unique ``id``, ``prompt_id``
(``{source}:{chain id}``), ``source`` ("red_team" /
"helpful"), ``principle`` (the chain's principle ids) and ``transform``.

  python -m cai_jax.main --gin_param="run.program=@chain_classifier_data" \\
      --workdir=/tmp/clf_data --gin_param="chain_classifier_data.sl_data='/tmp/gen'" \\
      --gin_param="chain_classifier_data.helpful_data='/tmp/helpful_gen'"
"""
from __future__ import annotations

import hashlib
import logging
from typing import Sequence

import gin

from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.dialogue import HUMAN, parse_hh, render
from cai_jax.data.generated import read_sl_data
from cai_jax.data.jailbreaks import TRANSFORMS, check_transforms, transform
from cai_jax.run import program
from cai_jax.sharding import processes

_log = logging.getLogger(__name__)


def held_out(prompt_id: str, fraction: float) -> bool:
  """Whether a prompt goes to the eval split (a stable hash of its id)."""
  h = int(hashlib.sha256(str(prompt_id).encode()).hexdigest()[:8], 16)
  return h / 0x100000000 < fraction


def _shapes(prompt_text: str, transforms: Sequence[str], seed: int) -> list[tuple[str, str]]:
  """(transform, dialogue text) of a prompt in every shape; a multi-turn prompt as is."""
  turns = parse_hh(prompt_text)
  if len(turns) != 1 or turns[0].role != HUMAN:
    return [("none", render(turns, open_role=None))]
  return [(name, render(transform(turns[0].text, name, seed), open_role=None))
          for name in transforms]


def chain_rows(chains: list[dict], source: str, *, transforms: Sequence[str], seed: int,
               keep_truncated: bool = False) -> tuple[list[dict], list[dict], dict[str, int]]:
  """(input rows, exchange rows, skip counts) of one set's chains (module docstring)."""
  harmful = source == "red_team"
  inputs, exchanges = [], []
  skipped = {"malformed": 0, "empty": 0, "unchanged": 0}
  for n, c in enumerate(chains):
    initial, final = c["initial"].strip(), c["final"].strip()
    if [f for f in c["flags"] if not (keep_truncated and f.endswith(":truncated"))]:
      skipped["malformed"] += 1
      continue
    if not initial or (harmful and not final):
      skipped["empty"] += 1
      continue
    if harmful and final == initial:
      skipped["unchanged"] += 1
      continue
    answers = [(initial, 1), (final, 0)] if harmful else [(initial, 0)]
    pid = f"{source}:{c['id']}"
    meta = {"prompt_id": pid, "source": source, "principle": ",".join(c["principle_ids"])}
    for name, text in _shapes(c["prompt"], transforms, seed + n):
      inputs.append({"id": f"{pid}/{name}", "text": text, "label": int(harmful),
                     "transform": name, **meta})
      exchanges.extend({"id": f"{pid}/{name}/{k}", "text": text, "response": a, "label": y,
                        "transform": name, **meta} for k, (a, y) in enumerate(answers))
  return inputs, exchanges, skipped


@gin.configurable
@program("chain_classifier_data", inputs=("sl_data", "helpful_data"), marks_done=True)
def chain_classifier_data(workdir: str, *, sl_data: str = gin.REQUIRED,
                          helpful_data: str = gin.REQUIRED,
                          transforms: Sequence[str] = tuple(TRANSFORMS),
                          eval_fraction: float = 0.1, keep_truncated: bool = False,
                          seed: int = 0) -> str:
  """Writes the classifier data sets (module docstring); returns ``workdir``.

  Args:
    workdir: output folder.
    sl_data: the ``sl_data`` set of ``generate_sl`` on red-team prompts (its workdir or
      the record folder).
    helpful_data: the same for helpfulness prompts (the answers are the chains' initial
      answers; ``num_rounds=0`` is enough).
    transforms: jailbreak shapes each request is written in.
    eval_fraction: share of prompts held out (by id) for the eval files.
    keep_truncated: keep chains whose only flaw is a turn cut by the generation budget
      (a real model's long answers; a streaming guard sees such prefixes too).
    seed: the transforms' draws.
  """
  check_transforms(transforms, "chain_classifier_data")
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"chain_classifier_data.eval_fraction must be in [0, 1), got "
                     f"{eval_fraction}")
  if workdir_lib.skip_if_done(workdir, "chain_classifier_data"):
    return workdir
  sets = {"red_team": read_sl_data(sl_data), "helpful": read_sl_data(helpful_data)}
  summary: dict = {"transforms": list(transforms), "eval_fraction": eval_fraction}
  out = {k: [] for k in ("inputs.train", "inputs.eval", "exchanges.train", "exchanges.eval")}
  for source, chains in sets.items():
    inputs, exchanges, skipped = chain_rows(chains, source, transforms=transforms, seed=seed,
                                            keep_truncated=keep_truncated)
    summary[source] = {"chains": len(chains), "skipped": skipped,
                       "input_rows": len(inputs), "exchange_rows": len(exchanges)}
    for kind, rows in (("inputs", inputs), ("exchanges", exchanges)):
      for r in rows:
        out[f"{kind}.{'eval' if held_out(r['prompt_id'], eval_fraction) else 'train'}"].append(r)
  if not out["exchanges.train"]:
    raise ValueError(f"chain_classifier_data: no usable chains in {sl_data} and "
                     f"{helpful_data} (see the skip counts: {summary})")
  for name, rows in out.items():
    summary[f"{name}.rows"] = len(rows)
    summary[f"{name}.harmful"] = sum(r["label"] for r in rows)
    if processes.is_chief():
      workdir_lib.write_jsonl(paths.join(workdir, f"{name}.jsonl"), rows)
  if processes.is_chief():
    workdir_lib.write_json(paths.join(workdir, "summary.json"), summary)
  _log.info("chain_classifier_data: %s", summary)
  workdir_lib.mark_done(workdir, f"{summary['exchanges.train.rows']} exchange rows\n")
  return workdir
