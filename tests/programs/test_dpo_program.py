"""The DPO program: the soft label is the loss's target (property level), and through the
binary it raises the policy's log-prob of chosen over rejected relative to the frozen
reference, and resumes after an abrupt death to exactly the parameters of an
uninterrupted run."""
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
from cai_jax.programs.dpo import dpo_loss_fn, pair_logprobs
from cai_jax.train.metrics import read_jsonl

WORDS = "apple river stone cloud bread lamp green quiet swift paper garden window".split()
GOOD, BAD = "thank you kindly", "go away now"


@pytest.fixture(scope="module")
def dpo_inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("dpo_inputs")
  rng = np.random.default_rng(0)
  with open(d / "train.jsonl", "w", encoding="utf-8") as f:
    for i in range(64):
      a, b = rng.choice(WORDS, 2, replace=False)
      prompt = f"\n\nHuman: {a}?\n\nAssistant: "
      good, bad, p = f"{GOOD} {b}.", f"{BAD} {b}.", float(rng.choice([1.0, 0.9, 0.8]))
      if i % 4 == 3:  # rude response first, label below 0.5
        good, bad, p = bad, good, 1.0 - p
      f.write(json.dumps({"chosen": prompt + good, "rejected": prompt + bad,
                          "p_chosen": p}) + "\n")
  text = [f"{w}? {GOOD} {v}. {w}? {BAD} {v}." for w in WORDS for v in WORDS]
  tok = train_tokenizer(text * 4, model_prefix=str(d / "tok"), vocab_size=300)
  cfg = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                    tie_embeddings=True, max_seq_len=64)
  _, params = init(cfg, seed=0)
  save_model(str(d / "lm"), params, cfg, info={"tokenizer_path": tok.path})
  return d, tok.path


def test_soft_label_is_the_target(dpo_inputs):
  d, tok_path = dpo_inputs
  _, graphdef, params, _ = load_model(str(d / "lm"))
  src = build_preference_pairs(str(d / "train.jsonl"), str(d / "data"))["train"]
  batch = next(iter(preference_loader(src, Tokenizer.load(tok_path), seq_len=48,
                                      batch_size=4, shuffle=False)))
  assert int(batch["num_truncated"].sum()) == 0
  batch = {k: v for k, v in batch.items() if k != "num_truncated"}
  ref = jax.jit(lambda p, b: pair_logprobs(graphdef, p, b["tokens"], b["loss_mask"]))(
      params, batch)
  batch["reference_logps"] = ref
  grad = jax.jit(jax.grad(lambda p, b: dpo_loss_fn(graphdef, 0.1)(p, b, None)[0]))
  norm = lambda g: float(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g)))
  # the policy starts equal to the reference: a 0.5 label is already met
  assert norm(grad(params, {**batch, "p_chosen": np.full(4, 0.5, np.float32)})) == 0.0
  assert norm(grad(params, {**batch, "p_chosen": np.ones(4, np.float32)})) > 0.0
  # swapping the responses and the label leaves the loss unchanged
  moved = jax.tree.map(lambda x: x + 0.01 * np.ones_like(x), params)
  loss = lambda b: float(dpo_loss_fn(graphdef, 0.1)(moved, b, None)[0])
  swapped = {"tokens": batch["tokens"][:, ::-1], "loss_mask": batch["loss_mask"][:, ::-1],
             "p_chosen": 1.0 - batch["p_chosen"], "reference_logps": ref[:, ::-1]}
  np.testing.assert_allclose(loss(batch), loss(swapped), rtol=1e-5)


def _run(run_main, workdir, d, *, fault_after=None, steps=20):
  return run_main(workdir, ["runs/dpo.gin"], [
      f"dpo.train_data='{d / 'train.jsonl'}'", f"dpo.init_from='{d / 'lm'}'",
      f"dpo.num_steps={steps}", "dpo.batch_size=8", "dpo.seq_len=48", "dpo.ckpt_every=5",
      "dpo.log_every=5", "make_optimizer.warmup_steps=2", "make_optimizer.learning_rate=3e-3",
  ], fault_after=fault_after)


def test_dpo_binary_learns_and_resumes_to_identical_params(run_main, dpo_inputs, tmp_path):
  d, _ = dpo_inputs
  ref = _run(run_main, tmp_path / "ref", d)
  assert ref.returncode == 0, ref.stderr[-3000:]
  rows = read_jsonl(str(tmp_path / "ref" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  print("dpo", [(r["step"], round(r["rewards/margin"], 3), round(r["rewards/accuracy"], 3))
                for r in rows])
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert rows[-1]["rewards/margin"] > rows[0]["rewards/margin"] > 0.0
  assert rows[-1]["rewards/accuracy"] > 0.8
  # the policy's chosen-over-rejected log-prob gap grew relative to the reference's
  gap = lambda r, who: r[f"logps/{who}_chosen"] - r[f"logps/{who}_rejected"]
  assert gap(rows[-1], "policy") - gap(rows[-1], "reference") > 1.0

  died = _run(run_main, tmp_path / "resumed", d, fault_after=13)
  assert died.returncode == 17, died.stderr[-3000:]
  again = _run(run_main, tmp_path / "resumed", d)
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(r"resumed from step (5|10)\b", again.stderr), again.stderr[-4000:]
  _, _, p_ref, info = load_model(str(tmp_path / "ref" / "model"))
  _, _, p_res, _ = load_model(str(tmp_path / "resumed" / "model"))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               p_ref, p_res)
  assert read_model_info(str(tmp_path / "ref" / "model"))[1] == "lm"
  assert info["program"] == "dpo" and info["beta"] == 0.1 and info["num_steps"] == 20
