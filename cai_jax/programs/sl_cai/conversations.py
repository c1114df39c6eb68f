"""SL-CAI's fine-tuning data: final revisions of red-team chains mixed with helpfulness.

``sl_conversations`` turns the ``sl_data`` set of ``generate_sl`` into the conversations
JSONL the SFT program trains on (Bai et al. 2022, Sec. 3.1: the model is fine-tuned on
(prompt, final revision) pairs, with helpfulness samples so it stays helpful).

  python -m cai_jax.main --gin_param="run.program=@sl_conversations" --workdir=/tmp/sl_data \
      --gin_param="sl_conversations.sl_data='/tmp/gen/records/sl_data'"
"""
from __future__ import annotations

import logging
import os

import gin
import numpy as np

from cai_jax import constitution as cc
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data.conversations import read_conversations, write_conversations
from cai_jax.data.dialogue import ASSISTANT, Turn, parse_hh
from cai_jax.data.generated import read_sl_data
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC

_log = logging.getLogger(__name__)


def _complete_sentences(text: str) -> str | None:
  """``text`` up to its last sentence end (. ! ?), or None if it has no complete one."""
  cut = max(text.rfind(c) for c in ".!?")
  return text[:cut + 1].strip() if cut > 0 else None


@gin.configurable
@program("sl_conversations",
         inputs=("sl_data", "helpful_data"), cosmetic=COSMETIC)
def sl_conversations(workdir: str, *, sl_data: str = gin.REQUIRED,
                     helpful_data: str | None = None, helpful_ratio: float = 1.0,
                     skip_malformed: bool = True, trim_truncated: bool = False,
                     seed: int = 0) -> str:
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
    trim_truncated: instead of leaving out an answer cut by ``max_new_tokens``, keep it up
      to its last complete sentence (when one is left). Not in the paper: for short
      generation budgets on real models, whose answers are longer than the budget.
    seed: which helpful conversations are taken, and the shuffle.

  Returns:
    The JSONL path (the SFT program's ``train_data``).
  """
  paths.makedirs(workdir)
  out = paths.join(workdir, "sl_conversations.jsonl")

  def final(row: dict, name: str, text: str) -> str | None:
    """The answer to train on, or None to leave the row out."""
    flags = {f.split(":", 1)[1] for f in row["flags"] if f.startswith(name + ":")}
    if trim_truncated and flags == {"truncated"}:
      return _complete_sentences(text)
    return None if skip_malformed and flags else text

  rows = read_sl_data(sl_data)
  red = []
  for r in rows:
    last = f"revision.{len(r['revisions']) - 1}" if r["revisions"] else "initial"
    answer = final(r, last, r["revisions"][-1] if r["revisions"] else r["initial"])
    if answer is None:
      continue
    revisions = list(r["revisions"][:-1]) + [answer] if r["revisions"] else []
    initial = r["initial"] if r["revisions"] else answer
    red.append(list(cc.revised_dialogue(tuple(parse_hh(r["prompt"])) + (
        Turn(ASSISTANT, initial),) + tuple(Turn("Revision", t) for t in revisions))))
  if rows and not red:
    raise RuntimeError(
        f"sl_conversations: all {len(rows)} chains of {sl_data} were left out as malformed "
        "(their final answer is truncated or empty), so there is nothing to fine-tune on; "
        "raise generate_sl.max_new_tokens, or set sl_conversations.trim_truncated = True")
  helpful: list[list[Turn]] = []
  if helpful_data is not None:
    if helpful_data.endswith(".jsonl"):
      helpful = read_conversations(helpful_data)
    else:
      helpful = [list(parse_hh(r["prompt"])) + [Turn(ASSISTANT, a)]
                 for r in read_sl_data(helpful_data)
                 if (a := final(r, "initial", r["initial"])) is not None]
  rng = np.random.default_rng(seed)
  want = int(round(helpful_ratio * len(red)))
  if want > len(helpful):
    _log.warning("sl_conversations: %d helpful conversations wanted, %d available",
                 want, len(helpful))
  picked = [helpful[i] for i in sorted(rng.permutation(len(helpful))[:want])]
  mixed = red + picked
  order = rng.permutation(len(mixed))
  write_conversations(out, [mixed[i] for i in order])
  workdir_lib.write_json(paths.join(workdir, "sl_conversations.json"), {
      "red_team": len(red), "red_team_skipped": len(rows) - len(red), "helpful": len(picked),
      "total": len(mixed)})
  _log.info("sl_conversations: %d red-team + %d helpful -> %s", len(red), len(picked), out)
  return out
