"""``pairwise_eval`` on Hugging Face folders: a tiny random Qwen2 saved by transformers with a
byte-level BPE ``tokenizer.json`` and a ChatML template (the layout of a real checkpoint)
answers through its chat template, and judges with multi-token "(A)"/"(B)" options; each
judgment is checked against transformers' own forward on the same weights."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers as tf

from cai_jax import constitution as cc
from cai_jax.data.dialogue import HUMAN, Turn
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.evaluation import answers as answers_lib
from cai_jax.programs.evaluate.pairwise import pairwise_eval
from cai_jax.rl.feedback import option_tokens

torch.set_num_threads(2)


def _hf_folder(path, tok_dir, seed):
  torch.manual_seed(seed)
  vocab = Tokenizer.load(tok_dir).vocab_size
  cfg = tf.Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=1024, tie_word_embeddings=True,
                       initializer_range=0.5)
  tf.Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
  for f in os.listdir(tok_dir):
    shutil.copy(os.path.join(tok_dir, f), path)
  return path


def _hf_option_logprob(model, prompt, tok, option):
  """log P(option tokens | prompt) from transformers' full forward (the option's ids as
  they continue the prompt: ``option_tokens``, tested in test_feedback_options)."""
  ids, option = option_tokens(prompt, tok, option)
  seq = torch.tensor([ids + option])
  with torch.no_grad():
    logp = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1).numpy()
  return sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(option))


def test_pairwise_on_hf_folders(tmp_path, bpe_folder):
  a = _hf_folder(str(tmp_path / "a"), bpe_folder, 0)
  b = _hf_folder(str(tmp_path / "b"), bpe_folder, 1)
  for name, words in (("red.jsonl", ["lamp", "river"]), ("help.jsonl", ["bread"])):
    (tmp_path / name).write_text("".join(json.dumps({"prompt": f"which {w}?"}) + "\n"
                                         for w in words))
  wd = str(tmp_path / "eval")
  out = pairwise_eval(wd, models={"a": a, "b": b}, judge=a,
                      red_team_prompts=str(tmp_path / "red.jsonl"),
                      helpful_prompts=str(tmp_path / "help.jsonl"),
                      constitution_path="constitutions/default.json", anchor="a",
                      max_new_tokens=4, batch_size=2, num_bootstrap=50, mesh_shape=(1, 1, 1))
  res = json.loads(open(out).read())
  assert res["judge_kind"] == "feedback model" and res["models"] == ["a", "b"]
  tok = Tokenizer.load(bpe_folder)
  assert len(tok.encode("(A)")) > 1   # the multi-token option path
  judge = tf.AutoModelForCausalLM.from_pretrained(a).eval()
  for kind, n in (("red_team", 2), ("helpful", 1)):
    rows = [json.loads(x) for x in open(os.path.join(wd, "judgments", f"{kind}.jsonl"))]
    assert len(rows) == n == res["sets"][kind]["num_comparisons"]
    ans = {m: [json.loads(x) for x in open(answers_lib.answers_file(wd, m, kind))]
           for m in ("a", "b")}
    for r in rows:
      req = [Turn(HUMAN, ans["a"][r["prompt"]]["prompt"])]
      x, y = ans["a"][r["prompt"]]["answer"], ans["b"][r["prompt"]]["answer"]
      want = []
      for first, second in ((x, y), (y, x)):
        prompt = cc.comparison_prompt(req, first, second, r["principle"])
        la, lb = (_hf_option_logprob(judge, prompt, tok, o) for o in ("(A)", "(B)"))
        want.append(1 / (1 + np.exp(lb - la)))
      assert [r["p_ab"], r["p_ba"]] == pytest.approx(want, abs=5e-4)
      assert r["p_a"] == pytest.approx(0.5 * (want[0] + 1 - want[1]), abs=5e-4)
