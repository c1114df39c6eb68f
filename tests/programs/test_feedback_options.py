"""The judge's options on real (BPE) vocabularies, a judge with its own tokenizer, and the
feedback model's one-answer verdicts.

A tiny byte-level BPE with a ChatML template (built here) splits "(A)" into several
tokens; the feedback model then scores each option's whole token sequence. The reference
is a brute-force full forward (``models.logits``) summing the option tokens' log-probs,
independent of the scoring path. The BPE folder is ``conftest.py``'s ``bpe_folder``. With the sentencepiece toy vocabulary, where each option
is one token, the single-token fast path runs (and gives the same brute-force numbers).
"""
import dataclasses
import json

import jax
import numpy as np
import pytest

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
from cai_jax.sampling import Sampler, continued_option_logprobs

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


# --- Chain of thought: the answer prompt is scored on the reasoning's own cache -------------

def _cot_prompts():
  return [cc.comparison_prompt("Which lamp is better?", "the river lamp", "the bread",
                               "Which response is more harmless?", chain_of_thought=True),
          cc.comparison_prompt("apple?", "thank you kindly apple.", "go away now.",
                               "Which is kinder?", chain_of_thought=True),
          cc.comparison_prompt("Is bread harmful? Tell me about the green garden window and "
                               "the quiet swift paper.", "no, thank you kindly, bread is fine "
                               "for the garden", "yes it is, go away now",
                               "Which is more harmful?", chain_of_thought=True),
          cc.comparison_prompt("stone?", "a stone", "cloud", "Which is better?",
                               chain_of_thought=True)]


def _reference_p_a(model, tok, prompts, reasoning, max_len=None):
  """P("(A)") from a plain full forward of each answer prompt (``cot_answer_prompt`` of the
  returned reasoning), tokenized here: the option's ids are what appending " (A)" adds.
  With ``max_len``, an over-long answer prompt keeps its last tokens (as the judge's
  length policy does)."""
  lp = np.zeros((len(prompts), 2))
  for i, (p, r) in enumerate(zip(prompts, reasoning)):
    ans = cc.cot_answer_prompt(p, r)
    ids = ans.token_ids(tok)
    for j, o in enumerate(cc.OPTIONS):
      full = cc.Prompt(ans.turns, ans.open_role, f"{ans.prefix} {o}").token_ids(tok)
      assert full[:len(ids)] == ids
      opt = full[len(ids):]
      seq = ids + opt[:-1]                      # the last option token is never an input
      cut = 0 if max_len is None else max(0, len(ids) - max_len)
      logp = jax.nn.log_softmax(models.logits(model, np.asarray([seq[cut:]], np.int32))[0], -1)
      lp[i, j] = sum(float(logp[len(ids) - cut - 1 + k, t]) for k, t in enumerate(opt))
  return 1 / (1 + np.exp(lp[:, 1] - lp[:, 0]))


def _fallback_spy(monkeypatch):
  """Records the answer prompts that are prefilled again (``FeedbackModel.option_logprobs``)."""
  seen = []
  real = FeedbackModel.option_logprobs

  def spy(self, prompts):
    seen.extend(prompts)
    return real(self, prompts)

  monkeypatch.setattr(FeedbackModel, "option_logprobs", spy)
  return seen


def test_cot_answers_continue_the_reasoning_cache(words_tokenizer, lm_config, monkeypatch):
  """Single-token options: P(A) after the reasoning, scored on its cache, equals a full
  forward of the answer prompt, and equals the re-prefill path; no row falls back. Then
  with reasoning cut short (the answer prompt ends inside what the model wrote, as when it
  writes the answer itself): the cache is cut back and the numbers still match. (This
  random model's reasoning re-tokenizes apart from what it sampled, so its rows keep the
  prompt's part of the cache; ``test_continued_option_logprobs`` cuts inside the sampled
  text.)"""
  tok = words_tokenizer
  model = models.build(lm_config, seed=4)
  sampler = Sampler.from_model(model)
  prompts = _cot_prompts()
  judge = FeedbackModel(sampler, tok, batch_size=3, chain_of_thought=True, cot_max_new_tokens=10)
  seen = _fallback_spy(monkeypatch)
  p_a, reasoning = judge.p_option_a(prompts, seed=1)
  assert all(reasoning) and not seen
  assert judge.cot_counts == {"answers": 4, "reprefilled": 0}
  np.testing.assert_allclose(p_a, _reference_p_a(model, tok, prompts, reasoning), atol=1e-5)
  old = FeedbackModel(sampler, tok, batch_size=3, chain_of_thought=True, cot_max_new_tokens=10,
                      cot_cache=False)
  p_old, r_old = old.p_option_a(prompts, seed=1)
  assert r_old == reasoning
  np.testing.assert_allclose(p_a, p_old, atol=1e-5)
  assert old.cot_counts == {"answers": 4, "reprefilled": 4} and len(seen) == 4
  seen.clear()

  trim = cc.trim_reasoning
  monkeypatch.setattr(cc, "trim_reasoning", lambda t: trim(t)[:len(trim(t)) // 2].strip())
  p_cut, r_cut = judge.p_option_a(prompts, seed=1)
  assert all(len(c) < len(r) for c, r in zip(r_cut, reasoning))
  assert not seen and judge.cot_counts == {"answers": 8, "reprefilled": 0}
  np.testing.assert_allclose(p_cut, _reference_p_a(model, tok, prompts, r_cut), atol=1e-5)


def test_cot_multi_token_options_continue_the_reasoning_cache(bpe_folder, monkeypatch):
  """Options of several tokens: the first from the appended text's logits, the rest scored
  on the (kept) extended cache, once per option."""
  tok = Tokenizer.load(bpe_folder)
  cfg = models.ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                           d_ff=64, init_std=0.2)
  model = models.build(cfg, seed=5)
  judge = FeedbackModel(Sampler.from_model(model), tok, batch_size=2, chain_of_thought=True,
                        cot_max_new_tokens=8)
  monkeypatch.setattr(feedback_lib, "candidate_logprobs",
                      lambda *a, **k: pytest.fail("fast path on multi-token options"))
  seen = _fallback_spy(monkeypatch)
  prompts = _cot_prompts()[:3]
  p_a, reasoning = judge.p_option_a(prompts, seed=2)
  assert all(len(option_tokens(cc.cot_answer_prompt(p, r), tok, "(A)")[1]) > 1
             for p, r in zip(prompts, reasoning))
  assert not seen and judge.cot_counts == {"answers": 3, "reprefilled": 0}
  np.testing.assert_allclose(p_a, _reference_p_a(model, tok, prompts, reasoning), atol=1e-5)


def test_cot_rows_that_do_not_continue_their_cache_are_prefilled_again(
    words_tokenizer, lm_config, monkeypatch):
  """A row whose answer prompt parts from its cache right after the prompt (a long
  reasoning unlike what was sampled) and a row whose prompt was truncated to fit
  ``max_seq_len`` are prefilled again, counted, and still score like a full forward; the
  other rows of their batch continue their cache."""
  tok = words_tokenizer
  prompts = _cot_prompts()
  seen = _fallback_spy(monkeypatch)

  model = models.build(lm_config, seed=6)
  judge = FeedbackModel(Sampler.from_model(model), tok, batch_size=4, chain_of_thought=True,
                        cot_max_new_tokens=10)
  trim, calls = cc.trim_reasoning, []

  def other_reasoning(text):   # the second row's reasoning is not what it sampled
    calls.append(text)
    return " ".join(["green garden lamp"] * 20) if len(calls) == 2 else trim(text)

  monkeypatch.setattr(cc, "trim_reasoning", other_reasoning)
  p_a, reasoning = judge.p_option_a(prompts, seed=3)
  assert reasoning[1].startswith("green garden lamp")
  assert judge.cot_counts == {"answers": 4, "reprefilled": 1}
  assert seen == [cc.cot_answer_prompt(prompts[1], reasoning[1])]
  np.testing.assert_allclose(p_a, _reference_p_a(model, tok, prompts, reasoning), atol=1e-5)
  monkeypatch.setattr(cc, "trim_reasoning", trim)

  # A model of 288 positions: the third prompt (288 tokens) loses its first tokens to leave
  # room for the reasoning; its answer prompt is scored on its last 288 tokens.
  seen.clear()
  short = models.build(dataclasses.replace(lm_config, max_seq_len=288), seed=6)
  lengths = [len(p.token_ids(tok)) for p in prompts]
  assert lengths[2] > 288 - 16 and max(lengths[:2] + lengths[3:]) + 16 + 40 < 288
  judge = FeedbackModel(Sampler.from_model(short, overflow="truncate"), tok, batch_size=4,
                        chain_of_thought=True, cot_max_new_tokens=16)
  p_a, reasoning = judge.p_option_a(prompts, seed=3)
  assert judge.cot_counts == {"answers": 4, "reprefilled": 1}
  assert seen == [cc.cot_answer_prompt(prompts[2], reasoning[2])]
  np.testing.assert_allclose(p_a, _reference_p_a(short, tok, prompts, reasoning, max_len=288),
                             atol=1e-5)


def test_continued_option_logprobs(words_tokenizer, lm_config):
  """``sampling.continued_option_logprobs`` on sequences that end inside what a row sampled
  (the cache is cut back to all but the sequence's last token), that part from it inside
  the sampled text, and that go on past its pending token; single- and multi-token
  options, against a full forward of sequence + option."""
  model = models.build(lm_config, seed=7)
  s = Sampler.from_model(model)
  prompts = [p.token_ids(words_tokenizer) for p in _cot_prompts()[:3]]
  for options in ([[5], [7]], [[11, 12, 13], [14, 15]]):
    res = s.generate(prompts, max_new_tokens=12, temperature=1.0, seed=4, keep_state=True)
    h = res.conversation.history
    seqs = [h[0][:len(h[0]) - 5],
            h[1][:len(prompts[1]) + 4] + [21, 22, 23],
            h[2] + [31, 32]]
    got, used = continued_option_logprobs(s, res.conversation, seqs, [options] * 3)
    assert used.all() and res.conversation.consumed
    for j, o in enumerate(options):
      np.testing.assert_allclose(got[:, j], _brute(model, [(x, o) for x in seqs]), atol=1e-4)
