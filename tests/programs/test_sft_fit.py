"""``sft_fit``: a model fine-tuned to answer every word politely reproduces the openings of
its training targets and a random model does not; the greedy answers it compares are those
of an independent full-forward argmax loop; bad arguments fail before any work."""
import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cai_jax import constitution as cc
from cai_jax import models
from cai_jax.data.conversations import write_conversations
from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import SavedModel
from cai_jax.programs.sl_cai.fit import opening, sft_fit
from cai_jax.programs.sl_cai.sft import sft


def test_opening_by_hand():
  assert opening("I'm  not able to help.", 3) == ("i'm", "not", "able")
  assert opening("Sure", 4) == ("sure",)


@pytest.fixture(scope="module")
def polite(tmp_path_factory, words, good_bad, random_lm):
  """Conversations "w?" -> polite answer naming w, and an SFT model fitted to them."""
  good, _ = good_bad
  d = tmp_path_factory.mktemp("sft_fit")
  convs = [[Turn(HUMAN, f"{w}?"), Turn(ASSISTANT, f"{good} {w}.")] for w in words]
  write_conversations(str(d / "convs.jsonl"), convs)

  def opt(total_steps):
    del total_steps
    return optax.adam(3e-3), optax.constant_schedule(3e-3)

  sft(str(d / "sft"), train_data=str(d / "convs.jsonl"), init_model=random_lm, seq_len=64,
      batch_size=8, num_steps=120, optimizer=opt, ckpt_every=1000, log_every=40)
  return d


def _argmax_answer(path, tok, request, max_new):
  """Greedy decoding by repeated full forward passes (no cache, no sampler)."""
  graphdef, params = SavedModel.open(path).load()
  model = models.merge(graphdef, params)
  ids = list(cc.initial_prompt(request).token_ids(tok))
  out = []
  for _ in range(max_new):
    nxt = int(jnp.argmax(models.logits(model, jnp.asarray([ids + out], jnp.int32))[0, -1]))
    out.append(nxt)
    if nxt in tok.stop_ids:
      break
  return tok.decode_generated(out)


def test_fitted_model_reproduces_its_targets(polite, random_lm, words):
  d = polite
  fitted = sft_fit(str(d / "fit_sft"), model=str(d / "sft" / "model"),
                   data=str(d / "convs.jsonl"), n=8, prefix_words=3, max_new_tokens=12,
                   batch_size=4)
  rand = sft_fit(str(d / "fit_random"), model=random_lm, data=str(d / "convs.jsonl"), n=8,
                 prefix_words=3, max_new_tokens=12, batch_size=4)
  print("sft_fit fitted", fitted, "random", rand)
  assert fitted["n"] == rand["n"] == 8
  assert fitted["prefix_match"] >= 0.875 and rand["prefix_match"] == 0.0
  rows = [json.loads(line) for line in open(d / "fit_sft" / "answers.jsonl")]
  assert len(rows) == 8 and {r["prompt"] for r in rows} <= {f"{w}?" for w in words}
  tok = Tokenizer.load(SavedModel.open(str(d / "sft" / "model")).info["tokenizer_path"])
  for r in rows[:2]:
    assert r["answer"] == _argmax_answer(str(d / "sft" / "model"), tok, r["prompt"], 12)
    assert r["prefix_match"] == (opening(r["answer"], 3) == opening(r["target"], 3))
  assert np.isclose(fitted["prefix_match"], np.mean([r["prefix_match"] for r in rows]))


def test_bad_arguments_fail_early(polite, random_lm, tmp_path):
  with pytest.raises(ValueError, match="prefix_words"):
    sft_fit(str(tmp_path / "a"), model=random_lm, data=str(polite / "convs.jsonl"),
            prefix_words=0)
  (tmp_path / "no_prompt.jsonl").write_text(
      json.dumps({"turns": [{"role": "Assistant", "text": "hi"}]}) + "\n")
  with pytest.raises(Exception, match="no_prompt.jsonl|assistant|prompt"):
    sft_fit(str(tmp_path / "b"), model=random_lm, data=str(tmp_path / "no_prompt.jsonl"))


def _params_equal(a, b):
  import jax
  pa, pb = SavedModel.open(a).load()[1], SavedModel.open(b).load()[1]
  return all(bool(jnp.array_equal(x, y)) for x, y in
             zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))


def test_until_fit_takes_the_shortest_schedule_that_fits(polite, random_lm, tmp_path):
  """A 2-step model does not reproduce the polite openings, the 120-step one does: the gate
  tries both, stops there (no 240-step run) and its model is exactly the fixture's 120-step
  SFT model (same data, seed and optimizer)."""
  import functools

  from cai_jax.programs.sl_cai.fit import sft_until_fit

  def opt(total_steps):
    del total_steps
    return optax.adam(3e-3), optax.constant_schedule(3e-3)

  train = functools.partial(sft, seq_len=64, batch_size=8, optimizer=opt, ckpt_every=1000,
                            log_every=40)
  out = sft_until_fit(str(tmp_path / "gate"), train=train,
                      train_data=str(polite / "convs.jsonl"), init_model=random_lm,
                      schedules=(2, 120, 240), threshold=0.8, fit_n=8, prefix_words=3,
                      fit_max_new_tokens=12)
  sched = json.loads((tmp_path / "gate" / "schedule.json").read_text())
  assert [t["num_steps"] for t in sched["tried"]] == [2, 120]
  assert sched["tried"][0]["prefix_match"] < 0.8 <= sched["tried"][1]["prefix_match"]
  assert sched["chosen_steps"] == 120 and sched["passed"] is True
  assert not (tmp_path / "gate" / "steps240").exists()
  assert out == str(tmp_path / "gate" / "model")
  assert _params_equal(out, str(polite / "sft" / "model"))
  assert SavedModel.open(out).info["schedule"] == {
      "num_steps": 120, "fit_prefix_match": sched["tried"][1]["prefix_match"], "passed": True}
  # No schedule reaches an unreachable threshold: the longest is used and flagged.
  sft_until_fit(str(tmp_path / "never"), train=train, train_data=str(polite / "convs.jsonl"),
                init_model=random_lm, schedules=(1, 2), threshold=1.0, fit_n=8,
                prefix_words=3, fit_max_new_tokens=12)
  never = json.loads((tmp_path / "never" / "schedule.json").read_text())
  assert [t["num_steps"] for t in never["tried"]] == [1, 2]
  assert never["chosen_steps"] == 2 and never["passed"] is False
  assert _params_equal(str(tmp_path / "never" / "model"),
                       str(tmp_path / "never" / "steps2" / "model"))


def test_until_fit_rejects_bad_schedules(polite, random_lm, tmp_path):
  from cai_jax.programs.sl_cai.fit import sft_until_fit
  for bad in ((), (4, 4), (0, 2)):
    with pytest.raises(ValueError, match="strictly increasing"):
      sft_until_fit(str(tmp_path / "x"), train=sft, train_data=str(polite / "convs.jsonl"),
                    init_model=random_lm, schedules=bad)
  with pytest.raises(ValueError, match="threshold"):
    sft_until_fit(str(tmp_path / "y"), train=sft, train_data=str(polite / "convs.jsonl"),
                  init_model=random_lm, schedules=(2,), threshold=0.0)
