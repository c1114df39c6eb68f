"""The data sets the CAI phases generate: their schemas and readers.

* ``sl_data`` (SL-CAI generation): one prompt's chain per row: the initial answer, the
  principle ids, every critique and revision, flags for malformed generations.
* ``pref_data`` (AI-feedback labeling): one labelled pair per row (``preference_features``
  plus the labeling record).

Both are ArrayRecord sets (``builders.write_records``) under ``{workdir}/records/``; the
readers accept the set folder or the workdir of the program that wrote it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cai_jax.data.conversations import parse_preference_row, read_jsonl
from cai_jax.data.records import read_rows

SL_DATA = "sl_data"
PREF_DATA = "pref_data"


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


def read_sl_data(path: str) -> list[dict[str, Any]]:
  """Rows of an ``sl_data`` set: ``DATA_DIR/sl_data`` or a generate_sl workdir."""
  return read_rows(path, SL_DATA, "train")


def pref_features() -> tfds.features.FeaturesDict:
  """``builders.preference_features`` plus the labeling record of each pair.

  ``p_a_order1[j]``: P("(A)") under principle j with the first answer shown as (A);
  ``p_a_order2[j]``: the same with the order swapped (empty without ``swap_orders``);
  ``p_first``: the final probability that the FIRST sampled answer is preferred;
  ``source``: "ai" (labelled by the feedback model) or "helpful" (mixed in);
  ``flags``: ``answer{i}:truncated`` and, with a second policy, ``answer{i}:{model}``.
  """
  text, seq, f32 = tfds.features.Text(), tfds.features.Sequence, np.float32
  return tfds.features.FeaturesDict({
      "id": text, "prompt": text, "chosen": text, "rejected": text,
      "p_chosen": tfds.features.Scalar(f32), "index": tfds.features.Scalar(np.int64),
      "source": text, "principle_ids": seq(text), "p_a_order1": seq(f32),
      "p_a_order2": seq(f32), "p_first": tfds.features.Scalar(f32),
      "first_is_chosen": tfds.features.Scalar(np.bool_), "reasoning": seq(text),
      "flags": seq(text)})


def read_pref_data(path: str, split: str | None = None) -> list[dict[str, Any]]:
  """Rows of a ``pref_data`` set (``DATA_DIR/pref_data`` or a labeling workdir);
  split None: every split."""
  return read_rows(path, PREF_DATA, split)


def helpful_pref_rows(path: str, limit: int | None = None) -> list[dict[str, Any]]:
  """Chosen/rejected JSONL rows (public HH format, optional ``p_chosen``) as
  ``pref_features`` rows with ``source = "helpful"`` (the preferred answer as chosen)."""
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
