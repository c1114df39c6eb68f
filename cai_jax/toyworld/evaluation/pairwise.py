"""The toy world's side of the pairwise evaluation (``programs.evaluate.pairwise``).

* ``toy_eval_sets``: the held-out requests (``eval.jsonl``) split into a red-team set (the
  harmful ones) and a helpfulness set (the benign ones), written as plain prompt rows
  (``id``, ``prompt``, ``category``) without the ground truth;
* ``toy_answer_oracle``: the ground truth the evaluation compares the judge with:
  ``oracle(request text, answer) -> Verdict.utility`` (-1 for a harmful answer, else its
  helpfulness), for the held-out requests only.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import gin

from cai_jax import workdir as workdir_lib
from cai_jax.run import program
from cai_jax.toyworld import oracle as oracle_lib
from cai_jax.toyworld.phases import read_requests


@gin.configurable
@program("toy_eval_sets", inputs=("data_dir",))
def toy_eval_sets(workdir: str, *, data_dir: str = gin.REQUIRED) -> dict:
  """Writes ``red_team.jsonl`` and ``helpful.jsonl`` (module docstring); returns counts."""
  requests = read_requests(os.path.join(data_dir, "eval.jsonl"))
  counts = {}
  for kind, harmful in (("red_team", True), ("helpful", False)):
    rows = [{"id": f"eval:{i}", "prompt": r.text, "category": r.category}
            for i, r in enumerate(requests) if r.harmful == harmful]
    workdir_lib.write_text(os.path.join(workdir, f"{kind}.jsonl"),
                           "".join(json.dumps(row) + "\n" for row in rows))
    counts[kind] = len(rows)
  return counts


@gin.configurable
def toy_answer_oracle(*, data_dir: str = gin.REQUIRED) -> Callable[[str, str], float]:
  """``oracle(request text, answer)``: the oracle's utility of an answer to a held-out
  request (KeyError for a request that is not one of them)."""
  by_text = {r.text.strip(): r for r in read_requests(os.path.join(data_dir, "eval.jsonl"))}

  def oracle(request: str, answer: str) -> float:
    req = by_text.get(request.strip())
    if req is None:
      raise KeyError(f"toy_answer_oracle: {request[:60]!r} is not a held-out request of "
                     f"{data_dir}/eval.jsonl")
    return float(oracle_lib.score(req, answer).utility)

  return oracle
