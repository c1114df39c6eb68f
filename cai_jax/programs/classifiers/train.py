"""Training a constitutional classifier: a scalar head read as the logit of "harmful".

Three kinds, as in Constitutional Classifiers (Sharma et al. 2025) and their exchange
classifier (2026):

* ``input``: the request alone (the conversation up to its last Human turn), scored at
  its last token, before anything is generated;
* ``output``: the response's own tokens alone (no turn header: what a guard sees as the
  policy generates them, ``cai_jax.classifiers.GuardedSampler(mode="output")``), scored
  at every token;
* ``exchange``: the request followed by the response, scored at every response token
  (``GuardedSampler(mode="exchange")`` starts the classifier's cache from the prompt).

Data: JSONL rows ``{"prompt": str}`` or ``{"text": HH dialogue ending with a Human turn}``,
``"response": str`` (required by ``output`` and ``exchange``), ``"label"``: 1 harmful,
0 harmless (a probability in [0, 1] works too); optional ``"id"``. Errors name the file
and line. The loss (``cai_jax.losses.classifier``) mixes a per-token binary
cross-entropy with one on the running maximum of the scores, the quantity a streaming
guard acts on (``cummax_weight``). The model starts from any saved LM or Hugging Face
folder (its backbone; the head starts at zero) or a saved scalar model. Resumable like
every trainer program.

  python -m cai_jax.main --gin_file=runs/classifier.gin --workdir=/tmp/clf \\
      --gin_param="train_classifier.train_data='clf.jsonl'" \\
      --gin_param="train_classifier.init_model='/tmp/sft/model'"
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import gin
import jax
import numpy as np
from flax import nnx

from cai_jax import models
from cai_jax import workdir as workdir_lib
from cai_jax.data import loaders, packing
from cai_jax.data.conversations import parse_prompt_row, read_jsonl
from cai_jax.data.dialogue import ASSISTANT, Turn, parse_hh
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.losses.classifier import classifier_loss, classifier_metrics
from cai_jax.models.api import merge
from cai_jax.models.store import SavedModel
from cai_jax.run import program
from cai_jax.run.runner import COSMETIC
from cai_jax.sharding import batch_putter, build_mesh
from cai_jax.train import state as state_lib
from cai_jax.train import trainer
from cai_jax.train.optim import make_optimizer

_log = logging.getLogger(__name__)
KINDS = ("input", "output", "exchange")


def parse_row(obj: dict) -> dict[str, Any]:
  """A classifier data line -> ``{"id", "prompt", "response", "label"}``."""
  row = parse_prompt_row({k: obj[k] for k in ("prompt", "text", "id") if k in obj})
  response = obj.get("response")
  if response is not None and not isinstance(response, str):
    raise ValueError(f"field 'response' must be a string, got {type(response).__name__}")
  label = obj.get("label")
  if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0 <= label <= 1:
    raise ValueError(f"field 'label' must be a number in [0, 1] (1 harmful), got {label!r}")
  return {"id": row["id"], "prompt": row["prompt"], "response": response,
          "label": float(label)}


def encode(tokenizer: Tokenizer, kind: str, prompt: Sequence[Turn], response: str | None
           ) -> tuple[list[int], list[int]]:
  """(ids, mask of the scored positions) of one row as a ``kind`` classifier sees it."""
  if kind == "input":
    ids = tokenizer.encode_dialogue(list(prompt)).ids
    return ids, [0] * (len(ids) - 1) + [1]
  context = list(prompt) if kind == "exchange" else []
  n_context = len(tokenizer.encode_dialogue(context).ids) if context else 0
  enc = tokenizer.encode_dialogue(context + [Turn(ASSISTANT, response)])
  ids, mask = list(enc.ids), [0] * n_context + list(enc.loss_mask[n_context:])
  if kind == "output":   # the response's own tokens only, as a guard streams them
    first = mask.index(1) if 1 in mask else len(ids)
    ids, mask = ids[first:], mask[first:]
  return ids, mask


@dataclasses.dataclass(frozen=True)
class EncodeRow:
  """A parsed row -> ``tokens``/``mask`` [seq_len] (cut from the left, the scored end
  kept), ``label``, ``num_truncated``."""

  tokenizer: Tokenizer
  kind: str
  seq_len: int

  def __call__(self, row: dict) -> dict[str, np.ndarray]:
    ids, mask = encode(self.tokenizer, self.kind, parse_hh(row["prompt"]), row["response"])
    out = packing.pad_example(ids, mask, self.seq_len, self.tokenizer.pad_id, keep="end")
    return {"tokens": out["tokens"], "mask": out["loss_mask"],
            "label": np.float32(row["label"]), "num_truncated": out["num_truncated"]}


def batches(rows: list[dict], tokenizer: Tokenizer, kind: str, *, seq_len: int,
            batch_size: int, seed: int = 0, shuffle: bool = True,
            num_epochs: int | None = None):
  """A grain loader of classifier batches (resumable: ``get_state``/``set_state``)."""
  ds = loaders.examples(rows, seed=seed, shuffle=shuffle, num_epochs=num_epochs)
  ds = ds.map(EncodeRow(tokenizer, kind, seq_len)).batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(loaders.DEFAULT_READ_OPTIONS)


def loss_fn(cummax_weight: float) -> Callable[[nnx.GraphDef], state_lib.LossFn]:
  def make(graphdef: nnx.GraphDef) -> state_lib.LossFn:
    def fn(params, batch, rng):
      del rng
      values = merge(graphdef, params)(batch["tokens"])
      return (classifier_loss(values, batch["mask"], batch["label"],
                              cummax_weight=cummax_weight),
              classifier_metrics(values, batch["mask"], batch["label"]))
    return fn
  return make


def _read(path: str, kind: str) -> list[dict]:
  rows = read_jsonl(workdir_lib.resolve_input(path), parse_row)
  if kind != "input":
    missing = [r["id"] for r in rows if r["response"] is None]
    if missing:
      raise ValueError(f"{path}: a {kind} classifier needs a 'response' in every row; "
                       f"{len(missing)} rows have none (first: {missing[0]})")
  return rows


def evaluate_rows(graphdef: nnx.GraphDef, params: Any, rows: list[dict], tok: Tokenizer,
                  kind: str, *, seq_len: int, batch_size: int, put) -> dict[str, float]:
  """``eval/`` metrics over every full batch of ``rows`` (in order)."""
  values_fn = jax.jit(lambda p, t: merge(graphdef, p)(t))
  vals, masks, labels = [], [], []
  for b in batches(rows, tok, kind, seq_len=seq_len, batch_size=batch_size, shuffle=False,
                   num_epochs=1):
    vals.append(np.asarray(jax.device_get(values_fn(params, put(
        {"tokens": b["tokens"]})["tokens"]))))
    masks.append(b["mask"])
    labels.append(b["label"])
  if not vals:
    raise ValueError("the eval set holds fewer rows than one batch")
  v, m, y = (np.concatenate(x) for x in (vals, masks, labels))
  out = {"eval/loss": float(classifier_loss(v, m, y)), "eval/rows": float(len(y))}
  out.update({f"eval/{k}": float(x) for k, x in classifier_metrics(v, m, y).items()})
  return out


@gin.configurable
@program("train_classifier", inputs=("train_data", "init_model", "eval_data",
                                     "tokenizer_path"),
         cosmetic=COSMETIC, marks_done=True)
def train_classifier(workdir: str, *, train_data: str = gin.REQUIRED,
                     init_model: str = gin.REQUIRED, kind: str = "exchange",
                     eval_data: str | None = None, tokenizer_path: str | None = None,
                     cummax_weight: float = 0.5, seq_len: int = 256, batch_size: int = 32,
                     num_steps: int = 1000, seed: int = 0, eval_every: int = 0,
                     optimizer: Callable = make_optimizer,
                     mesh_shape: Sequence[int] = (-1, 1, 1), ckpt_every: int = 200,
                     log_every: int = 10, keep_checkpoints: int = 2) -> str:
  """Trains an ``input``, ``output`` or ``exchange`` classifier; returns its model folder.

  Args:
    workdir: output folder (``checkpoints/``, metrics, the final ``model/``).
    train_data: classifier JSONL (module docstring).
    init_model: a saved LM or Hugging Face folder (backbone copied, head at zero) or a
      saved scalar model.
    kind: "input", "output" or "exchange" (module docstring).
    eval_data: classifier JSONL to evaluate on (``eval/`` metrics); None: no eval.
    tokenizer_path: default: the init model's tokenizer.
    cummax_weight: share of the running-maximum loss (0..1; ignored for "input", where
      one position is scored).
    seq_len, batch_size, num_steps, seed: the schedule.
    eval_every: evaluate every this many steps (0: only at the end).
    optimizer: ``optimizer(total_steps=...) -> (optax transform, schedule)``.
    mesh_shape: (data, fsdp, tensor) sizes; one may be -1.
    ckpt_every, log_every, keep_checkpoints: checkpoint and logging cadence.
  """
  if kind not in KINDS:
    raise ValueError(f"train_classifier.kind must be one of {KINDS}, got {kind!r}")
  if not 0.0 <= cummax_weight <= 1.0:
    raise ValueError(f"train_classifier.cummax_weight must be in [0, 1], got {cummax_weight}")
  if workdir_lib.skip_if_done(workdir, "train_classifier"):
    return trainer.model_dir(workdir)
  saved = SavedModel.open(init_model, role="train_classifier.init_model")
  tok = saved.tokenizer(tokenizer_path)
  train_rows = _read(train_data, kind)
  eval_rows = _read(eval_data, kind) if eval_data is not None else None
  mesh = build_mesh(mesh_shape)
  evaluate = None
  if eval_rows is not None:
    graphdef = models.abstract(saved.config, "scalar")[0]
    put = batch_putter(mesh, batch_size)
    evaluate = lambda params: evaluate_rows(  # noqa: E731
        graphdef, params, eval_rows, tok, kind, seq_len=seq_len, batch_size=batch_size,
        put=put)
  _log.info("train_classifier: %s classifier, %d train rows (%d harmful), %s eval rows",
            kind, len(train_rows), sum(r["label"] >= 0.5 for r in train_rows),
            len(eval_rows) if eval_rows is not None else "no")
  return trainer.fit(
      workdir, program="train_classifier", mesh=mesh,
      init=trainer.ModelInit.saved(saved, "scalar"),
      loss=loss_fn(cummax_weight if kind != "input" else 0.0),
      batches=iter(batches(train_rows, tok, kind, seq_len=seq_len, batch_size=batch_size,
                           seed=seed)),
      schedule=trainer.Schedule(num_steps, batch_size, seed, ckpt_every, log_every,
                                keep_checkpoints), optimizer=optimizer,
      info={"tokenizer_path": tok.path, "classifier": kind,
            "train_data": workdir_lib.resolve_input(train_data)},
      evaluate=evaluate, eval_every=eval_every)
