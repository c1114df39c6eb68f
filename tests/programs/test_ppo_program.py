"""The PPO program: rollout tensors line up with what the sampler produced (its own
log-probs), the PM sees exactly its training encoding, prompts cycle without repeats,
and through the binary a tiny policy raises a trained PM's score, logs the generation
share, and resumes after an abrupt death to exactly the parameters of an uninterrupted
run."""
import json
import re

import jax
import numpy as np
import optax
import pytest

from cai_jax.run.integrity import CorruptArtifactError

from cai_jax import constitution as cc
from cai_jax import models
from cai_jax.data.conversations import write_conversations
from cai_jax.data.dialogue import HUMAN, Turn
from cai_jax.data.loaders import EncodePair
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.scores import pair_rewards, response_scores
from cai_jax.models.store import SavedModel, save_model
from cai_jax.programs.rl_cai.ppo import ppo
from cai_jax.programs.rl_cai.preference_model import preference_model
from cai_jax.programs.sl_cai.sft import sft
from cai_jax.rl import ppo as ppo_lib
from cai_jax.rl.reward import RewardModel
from cai_jax.sampling import Sampler, buckets
from cai_jax.train.metrics import read_jsonl


@pytest.fixture(scope="module")
def ppo_inputs(tmp_path_factory, words, write_pairs, polite_rude_conversations, random_lm,
               words_tokenizer):
  """The tiny tokenizer and random LM, prompts, an SFT policy and a preference model
  trained to prefer polite answers (through the SFT and PM programs, in process)."""
  d = tmp_path_factory.mktemp("ppo_inputs")
  write_pairs(d / "pairs.jsonl", 96, 0, soft_labels=False)
  with open(d / "prompts.jsonl", "w", encoding="utf-8") as f:
    for w in words:
      f.write(json.dumps({"prompt": f"{w}?"}) + "\n")

  def opt(total_steps):
    del total_steps
    return optax.adam(3e-3), optax.constant_schedule(3e-3)

  # The policy starts as an SFT model answering politely or rudely about half the time.
  # No tokenizer_path: the init model's own (recorded in its info) is used.
  write_conversations(str(d / "sft.jsonl"), polite_rude_conversations)
  sft(str(d / "sft"), train_data=str(d / "sft.jsonl"), init_model=random_lm, seq_len=64,
      batch_size=8, num_steps=60, optimizer=opt, ckpt_every=100, log_every=20)
  assert SavedModel.open(str(d / "sft" / "model")).info["tokenizer_path"] == \
      words_tokenizer.path
  preference_model(str(d / "pm"), train_data=str(d / "pairs.jsonl"), init_model=random_lm,
                   seq_len=64, batch_size=8, num_steps=40, optimizer=opt, ckpt_every=100,
                   log_every=10)
  return d, random_lm, words_tokenizer.path


def test_rollout_arrays_align_with_the_sampler(ppo_inputs, words):
  d, lm, tok_path = ppo_inputs
  tok = Tokenizer.load(tok_path)
  graphdef, params = SavedModel.open(lm).load()
  vgraph, vparams = SavedModel.open(str(d / "pm" / "model")).load()
  prompts = [cc.initial_prompt(f"{w}?").token_ids(tok) for w in words[:4]]
  out = Sampler(graphdef, params).generate(prompts, max_new_tokens=6, temperature=1.0,
                                           seed=3, stop_tokens=[tok.eos_id])
  arr = ppo_lib.rollout_arrays(prompts, out.tokens, 32, 4, tok.pad_id)
  assert arr["mask"].sum() == sum(len(t) for t in out.tokens)
  graphdefs = {"policy": graphdef, "value": vgraph, "reward": vgraph}
  logp, values, _ = jax.jit(lambda p, t: ppo_lib.policy_and_values(graphdefs, p, t))(
      {"policy": params, "value": vparams}, arr["tokens"])
  assert values.shape == logp.shape == arr["mask"].shape
  for i, lps in enumerate(out.logprobs):   # the sampler's own base-model log-probs
    got = np.asarray(logp[i])[arr["mask"][i] > 0]
    np.testing.assert_allclose(got, lps, atol=2e-5)


def test_trimmed_rollout_equals_the_padded_one(ppo_inputs, words):
  """A rollout's rows are as long as it needs (``buckets.train_bucket``), not the longest
  prompt plus the whole budget: old/reference log-probs, values, PM scores, advantages
  and returns equal those of the same rollout padded to the full length."""
  d, lm, tok_path = ppo_inputs
  tok = Tokenizer.load(tok_path)
  graphdef, params = SavedModel.open(lm).load()
  sgraph, sparams = SavedModel.open(str(d / "sft" / "model")).load()
  vgraph, vparams = SavedModel.open(str(d / "pm" / "model")).load()
  rm = RewardModel(vgraph, vparams, tok, batch_size=4)
  reqs = [(Turn(HUMAN, f"{w}?"),) for w in words[:4]]
  prompts = [cc.initial_prompt(f"{w}?").token_ids(tok) for w in words[:4]]
  out = Sampler(sgraph, sparams).generate(prompts, max_new_tokens=8, temperature=1.0,
                                          seed=5, stop_tokens=[tok.eos_id])
  need = max(len(p) + len(t) for p, t in zip(prompts, out.tokens))
  short = buckets.train_bucket(need, 96)
  assert short < 96
  graphdefs = {"policy": graphdef, "value": vgraph, "reward": vgraph}
  res = {}
  for length in (short, 96):
    batch = ppo_lib.rollout_arrays(prompts, out.tokens, length, 4, tok.pad_id)
    batch.update(rm.arrays(reqs, [tok.decode_generated(t) for t in out.tokens], 4))
    sc = ppo_lib.score_rollout(graphdefs, {"policy": sparams, "value": vparams}, params,
                               vparams, batch)
    adv = ppo_lib.advantages(sc["score"], sc["logp"], sc["ref_logp"], sc["values"],
                             batch["mask"], beta=0.1, estimator="k1", gamma=1.0, lam=0.95,
                             whiten=True)
    m = batch["mask"] > 0
    res[length] = {"score": np.asarray(sc["score"]), "kl": np.asarray(adv["kl_seq"]),
                   **{k: np.asarray(v)[m] for k, v in {**sc, **adv}.items()
                      if k in ("logp", "ref_logp", "values", "advantages", "returns")}}
  assert np.ptp(res[96]["score"]) > 1e-3 and np.abs(res[96]["kl"]).max() > 1e-4
  for k, v in res[96].items():
    np.testing.assert_allclose(res[short][k], v, rtol=1e-4, atol=1e-4, err_msg=k)


def test_pm_sees_its_training_encoding(ppo_inputs, good_bad):
  d, _, tok_path = ppo_inputs
  good, bad = good_bad
  tok = Tokenizer.load(tok_path)
  rgraph, rparams = SavedModel.open(str(d / "pm" / "model")).load()
  rm = RewardModel(rgraph, rparams, tok, batch_size=2)
  req = (Turn(HUMAN, "apple?"),)
  answers = [f"{good} lamp.", f"{bad} lamp."]
  arr = rm.arrays([req, req], answers, 2)
  scores = np.asarray(response_scores(rgraph, rparams, arr["pm_tokens"], arr["pm_mask"]))
  pair = EncodePair(tok, 64)({"prompt": "\n\nHuman: apple?", "chosen": answers[0],
                              "rejected": answers[1]})
  ref = np.asarray(pair_rewards(rgraph, rparams, pair["tokens"][None], pair["loss_mask"][None]))
  assert int(pair["num_truncated"]) == 0
  np.testing.assert_array_equal(arr["pm_mask"][:, :64], pair["loss_mask"])
  np.testing.assert_allclose(scores, ref[0], atol=1e-5)
  np.testing.assert_allclose(rm.score([req, req], answers), ref[0], atol=1e-5)
  assert scores[0] > scores[1]   # the PM learned the preference


def test_iteration_prompts_cover_each_prompt_once_per_epoch():
  seen = [i for it in range(5) for i in ppo_lib.iteration_prompts(7, 4, 0, it)]
  assert len(seen) == 20
  assert sorted(seen[:7]) == list(range(7)) and sorted(seen[7:14]) == list(range(7))
  assert ppo_lib.iteration_prompts(7, 4, 0, 3) == ppo_lib.iteration_prompts(7, 4, 0, 3)


def _run(run_main, workdir, d, *, fault_after=None, iterations=8):
  return run_main(workdir, ["runs/ppo.gin"], [
      f"ppo.policy_model='{d / 'sft' / 'model'}'", f"ppo.reward_model='{d / 'pm' / 'model'}'",
      f"ppo.prompts='{d / 'prompts.jsonl'}'", f"ppo.num_iterations={iterations}",
      "ppo.rollout_batch=16", "ppo.minibatch_size=8", "ppo.max_new_tokens=8",
      "ppo.ckpt_every=3", "ppo.kl_coef=0.01", "make_optimizer.learning_rate=3e-3",
  ], fault_after=fault_after)


def test_ppo_binary_raises_the_reward_and_resumes_exactly(run_main, ppo_inputs, tmp_path,
                                                          same_saved_params):
  d, _, _ = ppo_inputs
  ref = _run(run_main, tmp_path / "ref", d)
  assert ref.returncode == 0, ref.stderr[-3000:]
  rows = [r for r in read_jsonl(str(tmp_path / "ref" / "metrics.jsonl")) if "env/kl" in r]
  assert [r["step"] for r in rows] == list(range(1, 9))
  score = [r["env/pm_score"] for r in rows]
  print("ppo pm score", [round(s, 3) for s in score], "kl",
        [round(r["env/kl"], 3) for r in rows])
  assert np.mean(score[-2:]) > np.mean(score[:2]) + 0.5
  assert rows[-1]["env/kl"] > 0.0
  assert all(0.0 < r["time/generation_share"] < 1.0 for r in rows)
  died = _run(run_main, tmp_path / "resumed", d, fault_after=4)
  assert died.returncode == 17, died.stderr[-3000:]
  again = _run(run_main, tmp_path / "resumed", d)
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(r"resumed from step", again.stderr), again.stderr[-4000:]
  saved = same_saved_params(tmp_path / "ref" / "model", tmp_path / "resumed" / "model")
  assert saved.kind == "lm"
  assert saved.info["program"] == "ppo" and saved.info["num_iterations"] == 8


def test_bad_arguments_fail_early(ppo_inputs, tmp_path):
  d, lm, _ = ppo_inputs
  with pytest.raises(ValueError, match="multiple of"):
    ppo(str(tmp_path), policy_model=lm, reward_model=str(d / "pm/model"),
        prompts=str(d / "prompts.jsonl"), rollout_batch=10, minibatch_size=4)
  with pytest.raises(ValueError, match="not a preference model"):
    ppo(str(tmp_path), policy_model=lm, reward_model=lm, prompts=str(d / "prompts.jsonl"),
        rollout_batch=16, minibatch_size=8)
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("role", ["policy_model", "reward_model", "value_model"])
def test_missing_model_fails_early_naming_its_role(ppo_inputs, tmp_path, role):
  d, lm, _ = ppo_inputs
  kw = dict(policy_model=lm, reward_model=str(d / "pm" / "model"))
  kw[role] = str(tmp_path / "no_such_model")
  with pytest.raises(FileNotFoundError, match=rf"ppo\.{role} .*no_such_model"):
    ppo(str(tmp_path / "run"), prompts=str(d / "prompts.jsonl"), rollout_batch=16,
        minibatch_size=8, **kw)
  assert not (tmp_path / "run" / "checkpoints").exists()
  assert not (tmp_path / "run" / "model").exists()


def test_non_finite_reward_stops_the_run(ppo_inputs, tmp_path):
  d, lm, _ = ppo_inputs
  pm = SavedModel.open(str(d / "pm" / "model"))
  _, params = pm.load()
  leaves, treedef = jax.tree.flatten(params)
  # A NaN parameter is refused when the model is loaded, naming the leaf.
  nan = list(leaves)
  nan[-1] = np.full_like(np.asarray(leaves[-1]), np.nan)
  save_model(str(tmp_path / "nan_pm"), jax.tree.unflatten(treedef, nan), pm.config,
             kind="scalar", info=dict(pm.info))
  with pytest.raises(CorruptArtifactError, match="non-finite values .*head_w_d"):
    SavedModel.open(str(tmp_path / "nan_pm")).load()
  # Finite but huge head weights overflow the scores to inf during the rollout.
  leaves[-1] = np.full_like(np.asarray(leaves[-1]), 3e38)
  save_model(str(tmp_path / "bad_pm"), jax.tree.unflatten(treedef, leaves), pm.config,
             kind="scalar", info=dict(pm.info))
  with pytest.raises(FloatingPointError, match="non-finite rollout scores at iteration 0"):
    ppo(str(tmp_path / "run"), policy_model=lm, reward_model=str(tmp_path / "bad_pm"),
        prompts=str(d / "prompts.jsonl"), rollout_batch=16, minibatch_size=8,
        max_new_tokens=4, num_iterations=2, ckpt_every=1)
  assert not (tmp_path / "run" / "DONE").exists()
  assert not list((tmp_path / "run" / "checkpoints").glob("[0-9]*"))


def test_memory_options_change_the_step_not_the_result(ppo_inputs, tmp_path, monkeypatch):
  """``memory_options.grad_accum_steps`` and ``memory_options.remat`` (gin) reach PPO's
  learner (micro-batched minibatch steps, rematerialised policy and value blocks) and give
  the parameters of a plain run up to float rounding."""
  import gin  # pylint: disable=import-outside-toplevel
  d, _, _ = ppo_inputs
  seen = []
  learner_cls = ppo_lib.PPOLearner

  def spy(cfg, **kw):
    g = kw["graphdefs"]
    seen.append((cfg.grad_accum_steps,
                 {"policy": models.merge(g["policy"], kw["ref_params"]).cfg.remat,
                  "value": models.merge(g["value"], kw["reward"].params).cfg.remat}))
    return learner_cls(cfg, **kw)

  monkeypatch.setattr(ppo_lib, "PPOLearner", spy)

  def opt(total_steps):
    del total_steps
    return optax.adam(3e-3), optax.constant_schedule(3e-3)

  kw = dict(policy_model=str(d / "sft" / "model"), reward_model=str(d / "pm" / "model"),
            prompts=str(d / "prompts.jsonl"), rollout_batch=8, minibatch_size=4,
            ppo_epochs=1, max_new_tokens=4, num_iterations=1, ckpt_every=1, optimizer=opt,
            mesh_shape=(2, 1, 1))
  plain = SavedModel.open(ppo(str(tmp_path / "plain"), **kw)).load()[1]
  gin.parse_config("memory_options.grad_accum_steps = 2\nmemory_options.remat = 'full'")
  try:
    small = SavedModel.open(ppo(str(tmp_path / "small"), **kw)).load()[1]
  finally:
    gin.clear_config()
  assert [s[0] for s in seen] == [1, 2]
  assert [s[1] for s in seen] == [{"policy": "none", "value": "none"}, {"policy": "full", "value": "full"}]
  init = SavedModel.open(str(d / "sft" / "model")).load()[1]
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(init)))
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(small)))
  print(f"ppo memory options: policy moved {moved:.2e}, max difference {diff:.2e}")
  assert moved > 1e-3 and diff < 1e-4
