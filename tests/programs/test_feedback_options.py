"""The judge's options on real (BPE) vocabularies, a judge with its own tokenizer, and the
feedback model's one-answer verdicts.

A tiny byte-level BPE with a ChatML template (built here) splits "(A)" into several
tokens; the feedback model then scores each option's whole token sequence. The reference
is a brute-force full forward (``models.logits``) summing the option tokens' log-probs,
independent of the scoring path. With the sentencepiece toy vocabulary, where each option
is one token, the single-token fast path runs (and gives the same brute-force numbers).
"""
import json

import jax
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models as tok_models, pre_tokenizers, trainers

from cai_jax import constitution as cc
from cai_jax import models
from cai_jax.constitution import assessment
from cai_jax.data.dialogue import parse_hh
from cai_jax.data.generated import read_pref_data
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import SavedModel, save_model
from cai_jax.programs.rl_cai.label import label_preferences
from cai_jax.rl import feedback as feedback_lib
from cai_jax.rl.feedback import FeedbackModel, option_tokens
from cai_jax.sampling import Sampler

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory, dialogue_texts_small):
  tok = tokenizers.Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(dialogue_texts_small, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                          for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
  folder = tmp_path_factory.mktemp("bpe")
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}))
  (folder / "chat_template.jinja").write_text(CHATML)
  return str(folder)


@pytest.fixture(scope="module")
def dialogue_texts_small():
  words = "the a lamp river bread answer is which response more harmful harmless option".split()
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(words, 12)) + " (A) (B) Human: Assistant: ?" for _ in range(300)]


def _brute(model, pairs):
  """Sum of log p(option token | everything before), from one full forward per row."""
  out = []
  for prompt, opt in pairs:
    seq = np.asarray([prompt + opt], np.int32)
    logp = jax.nn.log_softmax(models.logits(model, seq)[0], axis=-1)
    out.append(sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(opt)))
  return np.asarray(out)


def _prompts():
  return [cc.comparison_prompt("Which lamp is better?", "the river lamp", "the bread", "Which "
                               "response is more harmless?"),
          cc.comparison_prompt("Is bread harmful?", "no", "yes it is", "Which is more harmful?"),
          cc.cot_answer_prompt(cc.comparison_prompt("Which?", "a", "b", "Which?",
                                                    chain_of_thought=True), "the answer is a")]


def test_multi_token_options_match_brute_force(bpe_folder, monkeypatch):
  tok = Tokenizer.load(bpe_folder)
  assert len(tok.encode(" (A)")) > 1          # "(A)" is not one token in this vocabulary
  cfg = models.ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                           d_ff=64, init_std=0.2)
  model = models.build(cfg, seed=1)
  judge = FeedbackModel(Sampler.from_model(model), tok, batch_size=2)
  monkeypatch.setattr(feedback_lib, "candidate_logprobs",
                      lambda *a, **k: pytest.fail("fast path on multi-token options"))
  got = judge.option_logprobs(_prompts())
  for j, o in enumerate(cc.OPTIONS):
    pairs = [option_tokens(p, tok, o) for p in _prompts()]
    assert all(len(opt) > 1 for _, opt in pairs)
    np.testing.assert_allclose(got[:, j], _brute(model, pairs), atol=1e-4)
  p_a, _ = judge.p_option_a(_prompts())
  np.testing.assert_allclose(p_a, 1 / (1 + np.exp(got[:, 1] - got[:, 0])), atol=1e-5)


def test_single_token_options_take_the_fast_path(words_tokenizer, lm_config, monkeypatch):
  tok = words_tokenizer
  model = models.build(lm_config, seed=2)
  monkeypatch.setattr(feedback_lib, "option_logprobs",
                      lambda *a, **k: pytest.fail("sequence path on single-token options"))
  got = FeedbackModel(Sampler.from_model(model), tok, batch_size=8).option_logprobs(_prompts())
  for j, o in enumerate(cc.OPTIONS):
    pairs = [option_tokens(p, tok, o) for p in _prompts()]
    assert [len(opt) for _, opt in pairs] == [1, 1, 1]
    assert pairs[0][1] == [tok.single_token_id(o)]
    np.testing.assert_allclose(got[:, j], _brute(model, pairs), atol=1e-4)


def test_assessment_prompt_orders_and_p_harmful(bpe_folder):
  a, b = assessment.assessment_prompts("How do I pick a lock?", "Use a pin.")
  assert "(A) Yes, it is harmful." in a.text() and "(A) No, it is harmless." in b.text()
  assert a.text().endswith("Assistant: The answer is:") and a.turns[0].role == "Human"
  # a judge that always says (A) is undecided after both orders are averaged
  np.testing.assert_allclose(assessment.p_harmful(np.array([0.9]), np.array([0.9])), [0.5])
  np.testing.assert_allclose(assessment.p_harmful(np.array([0.8]), np.array([0.3])), [0.75])
  tok = Tokenizer.load(bpe_folder)
  ids = a.token_ids(tok)
  assert tok.decode(ids).rstrip().endswith("The answer is:")
  assert ids[:1] == [tok.token_id("<|im_start|>")]   # rendered through the chat template


def test_label_preferences_with_a_judge_of_another_tokenizer(
    bpe_folder, tmp_path, random_lm, words_tokenizer):
  """The policy (sentencepiece) and the feedback model (BPE + ChatML) tokenize apart."""
  tok = Tokenizer.load(bpe_folder)
  cfg = models.ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                           d_ff=64, init_std=0.2)
  judge_dir = save_model(str(tmp_path / "judge"), models.init(cfg, seed=3)[1], cfg,
                         info={"tokenizer_path": bpe_folder})
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"{w}?"}) + "\n"
                             for w in ("apple", "river", "stone", "cloud")))
  out = label_preferences(str(tmp_path / "label"), policy_model=random_lm,
                          feedback_model=judge_dir, prompts_path=str(prompts),
                          constitution_path="constitutions/default.json", max_new_tokens=6, exemplars=False,
                          shard_size=4, batch_size=4, mesh_shape=(1, 1, 1))
  rows = read_pref_data(out)
  assert rows and all(r["source"] == "ai" for r in rows)
  judge = FeedbackModel(Sampler(*SavedModel.open(judge_dir).load()), tok, batch_size=4)
  row = rows[0]
  req = parse_hh(row["prompt"])
  first, second = ((row["chosen"], row["rejected"]) if row["first_is_chosen"] else
                   (row["rejected"], row["chosen"]))
  principle = next(p for p in cc.load_constitution(cc.resolve_constitution_path("constitutions/default.json"))
                   .comparison_principles if p.id == row["principle_ids"][0])
  p_a, _ = judge.p_option_a([cc.comparison_prompt(req, first, second, principle)])
  np.testing.assert_allclose(row["p_a_order1"][0], p_a[0], atol=1e-5)
