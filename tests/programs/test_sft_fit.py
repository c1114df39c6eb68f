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
