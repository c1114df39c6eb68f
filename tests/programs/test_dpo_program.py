"""The DPO program: the soft label is the loss's target (property level), and through the
binary it raises the policy's log-prob of chosen over rejected relative to the frozen
reference, and resumes after an abrupt death to exactly the parameters of an
uninterrupted run."""
import re

import jax
import numpy as np
import pytest

from cai_jax.data.builders import build_preference_pairs
from cai_jax.data.loaders import preference_loader
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.scores import pair_logprobs
from cai_jax.models.store import SavedModel
from cai_jax.programs.rl_cai.dpo import dpo_loss_fn
from cai_jax.train.metrics import read_jsonl


@pytest.fixture(scope="module")
def dpo_inputs(tmp_path_factory, write_pairs, random_lm, words_tokenizer):
  """Soft-labelled polite-over-rude pairs and the random LM (the policy's init)."""
  d = tmp_path_factory.mktemp("dpo_inputs")
  write_pairs(d / "train.jsonl", 64, 0)
  return d, random_lm, words_tokenizer.path


def test_soft_label_is_the_target(dpo_inputs):
  d, lm, tok_path = dpo_inputs
  graphdef, params = SavedModel.open(lm).load()
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


def _run(run_main, workdir, d, lm, *, fault_after=None, steps=20, extra=()):
  return run_main(workdir, ["runs/dpo.gin"], [
      f"dpo.train_data='{d / 'train.jsonl'}'", f"dpo.policy_model='{lm}'",
      f"dpo.num_steps={steps}", "dpo.batch_size=8", "dpo.seq_len=48", "dpo.ckpt_every=5",
      "dpo.log_every=5", "make_optimizer.warmup_steps=2", "make_optimizer.learning_rate=3e-3",
      *extra], fault_after=fault_after)


def test_dpo_binary_learns_and_resumes_to_identical_params(run_main, dpo_inputs, tmp_path,
                                                           same_saved_params):
  d, lm, _ = dpo_inputs
  ref = _run(run_main, tmp_path / "ref", d, lm)
  assert ref.returncode == 0, ref.stderr[-3000:]
  rows = read_jsonl(str(tmp_path / "ref" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  print("dpo", [(r["step"], round(r["rewards/margin"], 3), round(r["rewards/accuracy"], 3))
                for r in rows])
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert rows[-1]["rewards/margin"] > rows[0]["rewards/margin"] > 0.0
  assert rows[-1]["rewards/accuracy"] > 0.8
  # the loop logs the share of pairs cut to fit seq_len: none are this short data
  assert all(r["data/truncated"] == 0.0 for r in rows)
  # the policy's chosen-over-rejected log-prob gap grew relative to the reference's
  gap = lambda r, who: r[f"logps/{who}_chosen"] - r[f"logps/{who}_rejected"]
  assert gap(rows[-1], "policy") - gap(rows[-1], "reference") > 1.0

  died = _run(run_main, tmp_path / "resumed", d, lm, fault_after=13)
  assert died.returncode == 17, died.stderr[-3000:]
  again = _run(run_main, tmp_path / "resumed", d, lm)
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(r"resumed from step (5|10)\b", again.stderr), again.stderr[-4000:]
  saved = same_saved_params(tmp_path / "ref" / "model", tmp_path / "resumed" / "model")
  assert saved.kind == "lm"
  info = saved.info
  assert info["program"] == "dpo" and info["beta"] == 0.1 and info["num_steps"] == 20
  assert info["reference"] == lm   # the frozen reference is the policy's init


def test_held_out_loss_and_early_stopping(dpo_inputs, tmp_path, write_pairs,
                                          same_saved_params):
  """Held-out pairs whose labels contradict the training pairs (rude chosen): their DPO loss
  rises as DPO learns, so ``select='eval/loss'`` keeps the first evaluation (step 5). The
  logged loss equals a hand computation (full forward passes, log-softmax, the DPO formula
  in numpy) and the kept model is bit-identical to a 5-step run."""
  import json

  import jax.numpy as jnp
  import optax

  from cai_jax import models
  from cai_jax.programs.rl_cai.dpo import dpo

  d, lm, tok_path = dpo_inputs
  rows = [json.loads(x) for x in open(write_pairs(tmp_path / "heldout.jsonl", 32, 5))]
  with open(tmp_path / "contrary.jsonl", "w") as f:
    for r in rows:
      f.write(json.dumps({"chosen": r["rejected"], "rejected": r["chosen"],
                          "p_chosen": r["p_chosen"]}) + "\n")

  def opt(total_steps):
    del total_steps
    return optax.adam(3e-3), optax.constant_schedule(3e-3)

  common = dict(train_data=str(d / "train.jsonl"), policy_model=lm, beta=0.1, seq_len=48,
                batch_size=8, optimizer=opt, ckpt_every=5, log_every=5)
  dpo(str(tmp_path / "sel"), num_steps=20, eval_data=str(tmp_path / "contrary.jsonl"),
      eval_every=5, select="eval/loss", **common)
  evals = [r for r in read_jsonl(str(tmp_path / "sel" / "metrics.jsonl")) if "eval/loss" in r]
  assert [r["step"] for r in evals] == [5, 10, 15, 20]
  losses = [r["eval/loss"] for r in evals]
  print("held-out DPO loss", losses)
  assert losses[-1] > losses[0] and min(losses) == losses[0]
  best = json.loads((tmp_path / "sel" / "best.json").read_text())
  assert best["step"] == 5 and best["value"] == losses[0] and best["metric"] == "eval/loss"
  kept = SavedModel.open(str(tmp_path / "sel" / "model"))
  assert kept.info["selected_step"] == 5 and kept.info["num_steps"] == 20

  dpo(str(tmp_path / "short"), num_steps=5, **common)
  same_saved_params(tmp_path / "short" / "model", tmp_path / "sel" / "model")

  # the logged held-out loss at step 5, by hand from the kept model and the reference
  src = build_preference_pairs(str(tmp_path / "contrary.jsonl"), str(tmp_path / "hd"))["train"]
  tok = Tokenizer.load(tok_path)

  def seq_logps(path):
    graphdef, params = SavedModel.open(path).load()
    model, out = models.merge(graphdef, params), []
    for b in preference_loader(src, tok, seq_len=48, batch_size=8, shuffle=False,
                               num_epochs=1):
      toks, mask = np.asarray(b["tokens"]), np.asarray(b["loss_mask"])   # [B, 2, L]
      flat = toks.reshape(-1, toks.shape[-1])
      logp = np.asarray(jax.nn.log_softmax(models.logits(model, jnp.asarray(flat)), -1))
      tok_lp = np.take_along_axis(logp[:, :-1], flat[:, 1:, None], -1)[..., 0]
      m = mask.reshape(flat.shape)[:, 1:]
      out.append(((tok_lp * m).sum(-1).reshape(toks.shape[:2]), np.asarray(b["p_chosen"])))
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])

  pi, t = seq_logps(str(tmp_path / "sel" / "model"))
  ref, _ = seq_logps(lm)
  h = 0.1 * ((pi[:, 0] - ref[:, 0]) - (pi[:, 1] - ref[:, 1]))
  log_sig = lambda x: -np.logaddexp(0.0, -x)
  by_hand = float(np.mean(-(t * log_sig(h) + (1 - t) * log_sig(-h))))
  np.testing.assert_allclose(losses[0], by_hand, rtol=2e-4, atol=1e-5)
  assert evals[0]["eval/pairs"] == len(t) == 32


def test_select_needs_eval_data(dpo_inputs, tmp_path):
  from cai_jax.programs.rl_cai.dpo import dpo
  d, lm, _ = dpo_inputs
  with pytest.raises(ValueError, match="select.*eval_data"):
    dpo(str(tmp_path / "x"), train_data=str(d / "train.jsonl"), policy_model=lm,
        select="eval/loss", num_steps=2, batch_size=8, seq_len=48)


def test_selection_resumes_to_the_same_choice(run_main, dpo_inputs, tmp_path, write_pairs,
                                              same_saved_params):
  """Early stopping through the binary, killed mid-run and rerun: the same step is kept and
  the saved model equals the uninterrupted run's."""
  import json
  d, lm, _ = dpo_inputs
  heldout = write_pairs(tmp_path / "heldout.jsonl", 16, 7)
  extra = (f"dpo.eval_data='{heldout}'", "dpo.eval_every=5", "dpo.select='eval/loss'")
  ref = _run(run_main, tmp_path / "ref", d, lm, extra=extra)
  assert ref.returncode == 0, ref.stderr[-3000:]
  died = _run(run_main, tmp_path / "resumed", d, lm, fault_after=13, extra=extra)
  assert died.returncode == 17, died.stderr[-3000:]
  again = _run(run_main, tmp_path / "resumed", d, lm, extra=extra)
  assert again.returncode == 0, again.stderr[-3000:]
  best = [json.loads((tmp_path / w / "best.json").read_text()) for w in ("ref", "resumed")]
  assert best[0] == best[1] and best[0]["step"] in (5, 10, 15, 20)
  evals = [r for r in read_jsonl(str(tmp_path / "ref" / "metrics.jsonl")) if "eval/loss" in r]
  assert best[0]["value"] == min(r["eval/loss"] for r in evals)
  same_saved_params(tmp_path / "ref" / "model", tmp_path / "resumed" / "model")
  assert sorted(p.name for p in (tmp_path / "resumed").glob("best_step*")) == [
      f"best_step{best[0]['step']}"]
