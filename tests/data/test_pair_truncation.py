"""Preference pairs longer than ``seq_len`` keep their response and lose the start of the
prompt: the reward is read at the response's end-of-turn token and DPO sums the
response's log-probs, checked against an independent forward pass on the tail of the
untruncated encoding; the cut pairs are counted and reported by the training loop."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cai_jax import models
from cai_jax.data import packing
from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn, render
from cai_jax.data.loaders import EncodePair
from cai_jax.models.scores import pair_logprobs, pair_rewards
from cai_jax.train import state as state_lib
from cai_jax.train.loop import train_loop
from cai_jax.train.metrics import MetricsWriter, read_jsonl

SEQ_LEN = 48
CHOSEN = "Sure, keep it dry and check the lamp."
REJECTED = "No."


def _long_prompt():
  """A multi-turn prompt much longer than SEQ_LEN."""
  turns = []
  for i in range(4):
    turns += [Turn(HUMAN, f"Tell me about the garden and the river, part {i}, in detail."),
              Turn(ASSISTANT, f"The garden is near the river and the stone bridge {i}.")]
  return turns + [Turn(HUMAN, "How do I fix my lamp?")]


def _full_ids(tok, prompt, response):
  """The untruncated encoding of prompt + response, and how many of its last tokens are
  the response (body + end of turn), from the tokenizer alone."""
  ids = tok.encode_dialogue(list(prompt) + [Turn(ASSISTANT, response)]).ids
  return ids, len(tok.encode(response)) + 1


def test_long_pair_keeps_its_response(tiny_tokenizer):
  tok = tiny_tokenizer
  prompt = _long_prompt()
  pair = EncodePair(tok, SEQ_LEN)({"prompt": render(prompt), "chosen": CHOSEN,
                                   "rejected": REJECTED})
  assert int(pair["num_truncated"]) == 2
  for j, response in enumerate((CHOSEN, REJECTED)):
    full, n_resp = _full_ids(tok, prompt, response)
    assert len(full) > SEQ_LEN
    want = [tok.bos_id] + full[-(SEQ_LEN - 1):]            # bos + the tail, by hand
    np.testing.assert_array_equal(pair["tokens"][j], want)
    mask = pair["loss_mask"][j]
    assert mask.sum() == n_resp and mask[-n_resp:].all()   # exactly the response
    assert pair["tokens"][j][-1] == tok.eos_id             # its end of turn is kept
    assert tok.decode(pair["tokens"][j][mask == 1]) == response


def test_rewards_and_logprobs_match_an_independent_forward(tiny_tokenizer):
  tok = tiny_tokenizer
  cfg = models.ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_seq_len=128, init_std=0.2)
  prompt = _long_prompt()
  pair = EncodePair(tok, SEQ_LEN)({"prompt": render(prompt), "chosen": CHOSEN,
                                   "rejected": REJECTED})
  tokens, mask = pair["tokens"][None], pair["loss_mask"][None]
  lm = models.build(cfg, seed=1)
  lm_graph, lm_params = models.split(lm)
  pm_graph, pm_params = models.split(models.build(cfg, "scalar", seed=2))
  leaves, treedef = jax.tree.flatten(pm_params)  # the scalar head starts at zero: move it
  keys = jax.random.split(jax.random.key(3), len(leaves))
  pm_params = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape)
                                           for x, k in zip(leaves, keys)])
  pm = models.merge(pm_graph, pm_params)
  logps = np.asarray(pair_logprobs(lm_graph, lm_params, jnp.asarray(tokens), jnp.asarray(mask)))
  rewards = np.asarray(pair_rewards(pm_graph, pm_params, jnp.asarray(tokens),
                                    jnp.asarray(mask)))
  for j, response in enumerate((CHOSEN, REJECTED)):
    full, n_resp = _full_ids(tok, prompt, response)
    row = np.asarray([[tok.bos_id] + full[-(SEQ_LEN - 1):]], np.int32)
    logp = np.asarray(jax.nn.log_softmax(models.logits(lm, row)[0], axis=-1))
    want = sum(logp[t - 1, row[0, t]] for t in range(SEQ_LEN - n_resp, SEQ_LEN))
    np.testing.assert_allclose(logps[0, j], want, rtol=1e-5)
    np.testing.assert_allclose(rewards[0, j], np.asarray(pm(jnp.asarray(row)))[0, -1],
                               rtol=1e-5, atol=1e-6)
  assert rewards[0, 0] != rewards[0, 1] and np.all(logps != 0.0)  # not read at bos


def test_a_response_longer_than_seq_len_keeps_its_end():
  ids = np.arange(10, 40, dtype=np.int32)
  mask = np.r_[np.zeros(5), np.ones(25)].astype(np.int32)
  row = packing.pad_example(ids, mask, 16, 0, keep="end")
  assert row["tokens"].tolist() == [10] + list(range(25, 40)) and row["num_truncated"] == 1
  assert row["loss_mask"].tolist() == [0] + [1] * 15
  short = packing.pad_example(ids[:8], mask[:8], 16, 0, keep="end")
  assert short["tokens"][:8].tolist() == ids[:8].tolist() and short["num_truncated"] == 0


def test_the_loop_reports_truncated_examples(tmp_path, caplog):
  tx = optax.sgd(0.1)
  state = state_lib.create_state({"w": jnp.zeros(2)}, tx)
  step_fn = state_lib.make_train_step(
      lambda p, b, r: (jnp.sum((p["w"] - b["x"]) ** 2), {}), tx)
  cut = [np.array([0, 2, 0, 0]), np.array([0, 0, 0, 0]), np.array([1, 1, 0, 0])]
  batches = iter([{"x": np.ones((4, 2), np.float32).mean(0), "num_truncated": c}
                  for c in cut])
  with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
    train_loop(state=state, step_fn=step_fn, batches=batches, num_steps=3,
               rng=jax.random.key(0), put_batch=lambda b: jax.tree.map(jnp.asarray, b),
               writer=writer, log_every=1, desc="pm")
  rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["data/truncated"] for r in rows] == [0.25, 0.0, 0.5]
  assert "3 of the 12 examples read were cut" in caplog.text
