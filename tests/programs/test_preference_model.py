"""The preference-model program: the soft label is the loss's target (property level),
and through the binary it learns a feature of the chosen responses, evaluates, and
resumes after an abrupt death to exactly the parameters of an uninterrupted run."""
import re

import jax
import numpy as np
import pytest

from cai_jax.data.builders import build_preference_pairs
from cai_jax.data.loaders import preference_loader
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import SavedModel
from cai_jax.programs.rl_cai.preference_model import pm_loss_fn
from cai_jax.train.metrics import read_jsonl


@pytest.fixture(scope="module")
def pair_inputs(tmp_path_factory, write_pairs, random_lm, words_tokenizer):
  """Soft-labelled polite-over-rude train and eval pairs and the random LM (the PM's
  backbone)."""
  d = tmp_path_factory.mktemp("pm_inputs")
  write_pairs(d / "train.jsonl", 64, 0)
  write_pairs(d / "eval.jsonl", 32, 1)
  return d, random_lm, words_tokenizer.path


def test_soft_label_is_the_target(pair_inputs):
  d, lm, tok_path = pair_inputs
  graphdef, params = SavedModel.open(lm).load(kind="scalar")  # zero head: margin 0
  src = build_preference_pairs(str(d / "train.jsonl"), str(d / "data"))["train"]
  batch = next(iter(preference_loader(src, Tokenizer.load(tok_path), seq_len=48,
                                      batch_size=4, shuffle=False)))
  assert int(batch["num_truncated"].sum()) == 0
  batch = {k: v for k, v in batch.items() if k != "num_truncated"}
  grad = jax.jit(jax.grad(lambda p, b: pm_loss_fn(graphdef)(p, b, None)[0]))
  norm = lambda g: float(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g)))
  # the untrained PM scores both responses alike: a 0.5 label is already met
  assert norm(grad(params, {**batch, "p_chosen": np.full(4, 0.5, np.float32)})) == 0.0
  assert norm(grad(params, {**batch, "p_chosen": np.ones(4, np.float32)})) > 0.0
  # swapping the responses and the label leaves the loss unchanged
  params = jax.tree.map(lambda x: x + 0.01 * np.ones_like(x), params)
  loss = lambda b: float(pm_loss_fn(graphdef)(params, b, None)[0])
  swapped = {"tokens": batch["tokens"][:, ::-1], "loss_mask": batch["loss_mask"][:, ::-1],
             "p_chosen": 1.0 - batch["p_chosen"]}
  np.testing.assert_allclose(loss(batch), loss(swapped), rtol=1e-5)


def _run(run_main, workdir, d, lm, *, fault_after=None, steps=30):
  return run_main(workdir, ["runs/preference_model.gin"], [
      f"preference_model.train_data='{d / 'train.jsonl'}'",
      f"preference_model.eval_data='{d / 'eval.jsonl'}'",
      f"preference_model.init_model='{lm}'", f"preference_model.num_steps={steps}",
      "preference_model.batch_size=8", "preference_model.seq_len=48",
      "preference_model.ckpt_every=5", "preference_model.log_every=5",
      "preference_model.eval_every=15", "make_optimizer.warmup_steps=2",
      "make_optimizer.learning_rate=3e-3",
  ], fault_after=fault_after)


def test_pm_binary_learns_and_resumes_to_identical_params(run_main, pair_inputs, tmp_path,
                                                          same_saved_params):
  d, lm, _ = pair_inputs
  ref = _run(run_main, tmp_path / "ref", d, lm)
  assert ref.returncode == 0, ref.stderr[-3000:]
  rows = read_jsonl(str(tmp_path / "ref" / "metrics.jsonl"))
  train = [r for r in rows if "loss" in r]
  evals = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
  assert [r["step"] for r in evals] == [15, 30]
  print("pm train", [(r["step"], round(r["preference/accuracy"], 3),
                      round(r["preference/margin"], 3)) for r in train])
  print("pm eval", evals[-1])
  assert train[-1]["loss"] < train[0]["loss"]
  assert train[-1]["preference/accuracy"] > 0.8
  assert train[-1]["preference/margin"] > train[0]["preference/margin"]
  # the loop logs the share of pairs cut to fit seq_len: none are this short data
  assert all(r["data/truncated"] == 0.0 for r in train)
  assert evals[-1]["eval/preference/accuracy"] > 0.8 and evals[-1]["eval/pairs"] == 32
  assert 0.0 <= evals[-1]["eval/preference/ece"] <= 1.0

  # Die right after step 15: its checkpoint is written (or in flight) and its evaluation
  # has not run yet. The rerun must log that evaluation, and no row twice.
  died = _run(run_main, tmp_path / "resumed", d, lm, fault_after=15)
  assert died.returncode == 17, died.stderr[-3000:]
  again = _run(run_main, tmp_path / "resumed", d, lm)
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(r"resumed from step (10|15)\b", again.stderr), again.stderr[-4000:]
  resumed = read_jsonl(str(tmp_path / "resumed" / "metrics.jsonl"))
  assert [r["step"] for r in resumed] == [r["step"] for r in rows]
  assert [r["step"] for r in resumed if "eval/loss" in r] == [15, 30]
  saved = same_saved_params(tmp_path / "ref" / "model", tmp_path / "resumed" / "model")
  assert saved.kind == "scalar"
  info = saved.info
  assert info["program"] == "preference_model" and info["num_steps"] == 30
