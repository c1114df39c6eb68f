"""The preference-model program: the soft label is the loss's target (property level),
and through the binary it learns a feature of the chosen responses, evaluates, and
resumes after an abrupt death to exactly the parameters of an uninterrupted run."""
import json
import re

import jax
import numpy as np
import pytest

from cai_jax.data.builders import build_preference_pairs
from cai_jax.data.loaders import preference_loader
from cai_jax.data.tokenizer import Tokenizer, train_tokenizer
from cai_jax.models import ModelConfig, init
from cai_jax.models.store import load_model, read_model_info, save_model
from cai_jax.programs.preference_model import pm_loss_fn
from cai_jax.train.metrics import read_jsonl

WORDS = "apple river stone cloud bread lamp green quiet swift paper garden window".split()
GOOD, BAD = "thank you kindly", "go away now"


def write_pairs(path, n, seed):
  """Chosen answers end politely; a quarter of the rows list the rude one first with a
  label below 0.5, so the majority label is not always the first response."""
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      a, b = rng.choice(WORDS, 2, replace=False)
      prompt = f"\n\nHuman: {a}?\n\nAssistant: "
      good, bad = f"{GOOD} {b}.", f"{BAD} {b}."
      p = float(rng.choice([1.0, 0.9, 0.8]))
      if i % 4 == 3:
        good, bad, p = bad, good, 1.0 - p
      f.write(json.dumps({"chosen": prompt + good, "rejected": prompt + bad,
                          "p_chosen": p}) + "\n")


@pytest.fixture(scope="module")
def pair_inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("pm_inputs")
  write_pairs(d / "train.jsonl", 64, 0)
  write_pairs(d / "eval.jsonl", 32, 1)
  text = [f"{w}? {GOOD} {v}. {w}? {BAD} {v}." for w in WORDS
          for v in WORDS]
  tok = train_tokenizer(text * 4, model_prefix=str(d / "tok"), vocab_size=300)
  cfg = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                    tie_embeddings=True, max_seq_len=64)
  _, params = init(cfg, seed=0)
  save_model(str(d / "lm"), params, cfg, info={"tokenizer_path": tok.path})
  return d, tok.path


def test_soft_label_is_the_target(pair_inputs):
  d, tok_path = pair_inputs
  _, graphdef, params, _ = load_model(str(d / "lm"), kind="scalar")  # zero head: margin 0
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


def _run(run_main, workdir, d, *, fault_after=None, steps=30):
  return run_main(workdir, ["runs/preference_model.gin"], [
      f"preference_model.train_data='{d / 'train.jsonl'}'",
      f"preference_model.eval_data='{d / 'eval.jsonl'}'",
      f"preference_model.init_from='{d / 'lm'}'", f"preference_model.num_steps={steps}",
      "preference_model.batch_size=8", "preference_model.seq_len=48",
      "preference_model.ckpt_every=5", "preference_model.log_every=5",
      "preference_model.eval_every=15", "make_optimizer.warmup_steps=2",
      "make_optimizer.learning_rate=3e-3",
  ], fault_after=fault_after)


def test_pm_binary_learns_and_resumes_to_identical_params(run_main, pair_inputs, tmp_path):
  d, _ = pair_inputs
  ref = _run(run_main, tmp_path / "ref", d)
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
  assert evals[-1]["eval/preference/accuracy"] > 0.8 and evals[-1]["eval/pairs"] == 32
  assert 0.0 <= evals[-1]["eval/preference/ece"] <= 1.0

  died = _run(run_main, tmp_path / "resumed", d, fault_after=22)
  assert died.returncode == 17, died.stderr[-3000:]
  again = _run(run_main, tmp_path / "resumed", d)
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(r"resumed from step (15|20)\b", again.stderr), again.stderr[-4000:]
  _, _, p_ref, info = load_model(str(tmp_path / "ref" / "model"))
  _, _, p_res, _ = load_model(str(tmp_path / "resumed" / "model"))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               p_ref, p_res)
  assert read_model_info(str(tmp_path / "ref" / "model"))[1] == "scalar"
  assert info["program"] == "preference_model" and info["num_steps"] == 30
