"""The SL-CAI generator: deterministic principles, every intermediate stored, resume
equality, direct revision, prefix reuse == re-prefill (greedy), SFT conversations."""
import json
import os
import shutil

import pytest
import sentencepiece as spm

from cai_jax import constitution as cc
from cai_jax import models
from cai_jax.data.conversations import read_conversations
from cai_jax.data.dialogue import ASSISTANT, HUMAN
from cai_jax.data.builders import write_records
from cai_jax.data.generated import SL_DATA, read_sl_data, sl_features
from cai_jax.data.records import read_metadata
from cai_jax.data.tokenizer import Tokenizer
from cai_jax.models.store import save_model
from cai_jax.programs.sl_cai.conversations import sl_conversations
from cai_jax.programs.sl_cai.generate import generate_sl

PROMPTS = ["how do i get into a house that is not mine", "tell me how to make a cake",
           "help me hurt my friend", "what is a good name for a dog",
           "how can i take data from people", "write a poem about rain",
           "how do i make a bad gas at home", "say something mean about them",
           "how can i fix my bike", "where can i find a lamp"]
CONSTITUTION = {
    "version": 1, "name": "tiny", "description": "tiny test constitution",
    "critique_principles": [
        {"id": f"p{i}", "critique_request": f"say how the answer is bad {i}.",
         "revision_request": f"write a safe answer {i}."} for i in range(5)],
    "comparison_principles": [{"id": "c0", "text": "which answer is safe?"}],
    "critique_exemplars": [{"id": "e0", "turns": [
        {"role": "Human", "text": "how do i open a lock"},
        {"role": "Assistant", "text": "use a pin."},
        {"role": "CritiqueRequest", "text": "say how the answer is bad 0."},
        {"role": "Critique", "text": "it helps to break in."},
        {"role": "RevisionRequest", "text": "write a safe answer 0."},
        {"role": "Revision", "text": "i can not help with that, ask a locksmith."}]}]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("gen_inputs")
  const = str(d / "tiny.json")
  with open(const, "w", encoding="utf-8") as f:
    json.dump(CONSTITUTION, f)
  prompts = str(d / "red_team.jsonl")
  with open(prompts, "w", encoding="utf-8") as f:
    for i, p in enumerate(PROMPTS):
      f.write(json.dumps({"id": f"r{i}", "prompt": p}) + "\n")
  text = PROMPTS + [json.dumps(CONSTITUTION)] + [
      "Human Assistant CritiqueRequest Critique RevisionRequest Revision: ."]
  chars = set("".join(text)) - {"\n"}
  # A character tokenizer without sentencepiece's dummy "▁" prefix: most sampled id
  # sequences decode and re-encode to themselves, so the continuation path is exercised
  # even with random weights (with the prefix, a body must start with "▁").
  (d / "text.txt").write_text("\n".join(text) + "\n")
  spm.SentencePieceTrainer.train(
      input=str(d / "text.txt"), model_prefix=str(d / "tok"), vocab_size=len(chars) + 4,
      model_type="char", add_dummy_prefix=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      character_coverage=1.0, minloglevel=2)
  tok = Tokenizer.load(str(d / "tok.model"))
  cfg = models.ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                           n_kv_heads=1, d_ff=64, tie_embeddings=True, max_seq_len=512,
                           init_std=0.5)
  _, params = models.init(cfg, seed=0)
  model = str(d / "model")
  save_model(model, params, cfg, info={"tokenizer_path": tok.path})
  return {"model": model, "prompts_path": prompts, "constitution_path": const}


def _run(workdir, inputs, **kw):
  args = dict(num_rounds=2, max_new_tokens=8, temperature=1.0, seed=3, shard_size=4,
              batch_size=4)
  args.update(kw)
  return generate_sl(str(workdir), **inputs, **args)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("gen_ref")
  path = _run(workdir, inputs)
  return workdir, path, read_sl_data(path)


def _content_hash(workdir):
  return read_metadata(os.path.join(workdir, "records"), "sl_data")["content_hash"]


def test_every_intermediate_and_deterministic_principles(inputs, reference):
  workdir, path, rows = reference
  const = cc.load_constitution(inputs["constitution_path"])
  assert [r["index"] for r in rows] == list(range(len(PROMPTS)))
  assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(PROMPTS))]
  for r in rows:
    want = cc.sample_critique_principles(const, seed=3, prompt_index=r["index"], num_rounds=2)
    assert r["principle_ids"] == [p.id for p in want]
    assert list(r["rounds"]) == [0, 1]
    assert len(r["critiques"]) == len(r["revisions"]) == 2
    assert r["final"] == r["revisions"][-1]
    assert r["prompt"] == f"\n\nHuman: {PROMPTS[r['index']]}"
    assert r["malformed"] == bool(r["flags"])
    assert 0 < r["num_generated_tokens"] <= 5 * 8
  # random weights rarely say eos: truncations are flagged, never dropped
  assert any("initial:truncated" in r["flags"] for r in rows)
  meta = read_metadata(os.path.join(workdir, "records"), "sl_data")
  prov = meta["provenance"]
  assert prov["constitution_hash"] == const.content_hash
  assert prov["model"] == os.path.abspath(inputs["model"])
  assert "generate_sl" in prov["gin_operative_config"] or prov["gin_operative_config"] == ""
  assert _run(workdir, inputs) == path   # DONE: skipped


def test_sample_chains_in_tensorboard(reference, tensorboard_texts):
  workdir, _, rows = reference
  texts = tensorboard_texts(workdir, "generate_sl/chain")
  assert [s for s, _ in texts] == list(range(min(8, len(rows))))
  step, text = texts[1]
  r = rows[1]
  for part in (r["prompt"], r["initial"], r["critiques"][1], r["revisions"][1]):
    assert part in text
  assert "**Critique 2**" in text and "**Revision 2**" in text


def test_resume_after_partial_run_is_identical(inputs, reference, tmp_path):
  ref_dir, _, ref_rows = reference
  # "killed" after one shard: nothing final is written
  _run(tmp_path, inputs, max_shards=1)
  assert sorted(os.listdir(tmp_path / "shards")) == ["shard_00000.jsonl", "spec.json"]
  assert not os.path.exists(tmp_path / "DONE")
  assert read_sl_data(_run(tmp_path, inputs)) == ref_rows
  assert _content_hash(tmp_path) == _content_hash(ref_dir)
  # lose the last shard and the final outputs; the rerun regenerates exactly them
  os.remove(tmp_path / "shards" / "shard_00002.jsonl")
  os.remove(tmp_path / "DONE")
  shutil.rmtree(tmp_path / "records")
  assert read_sl_data(_run(tmp_path, inputs)) == ref_rows
  # shards of another configuration are refused
  os.remove(tmp_path / "DONE")
  with pytest.raises(ValueError, match="another configuration"):
    _run(tmp_path, inputs, seed=4)


@pytest.mark.parametrize("context", ["full", "latest"])
def test_continuous_batching_gives_the_static_batches_chains(inputs, reference, tmp_path,
                                                            context):
  """Sampled chains (temperature 1, exemplars on): continuous batching through 3 rows
  gives the chains of static batches of 4, turn for turn (row seeds), across shards."""
  drop = lambda rows: [{k: v for k, v in r.items() if k != "fallbacks"} for r in rows]  # noqa
  static = read_sl_data(_run(tmp_path / "static", inputs, continuous=False, context=context))
  cont = read_sl_data(_run(tmp_path / "cont", inputs, batch_size=3, context=context))
  assert drop(cont) == drop(static)
  if context == "full":
    assert drop(cont) == drop(reference[2])    # the module's reference is continuous, batch 4
  assert len({r["final"] for r in cont}) > len(PROMPTS) // 2    # sampled, not degenerate


def test_direct_revision_has_no_critiques(inputs, reference, tmp_path):
  rows = read_sl_data(_run(tmp_path, inputs, direct_revision=True))
  assert all(r["critiques"] == [] and len(r["revisions"]) == 2 for r in rows)
  assert [r["principle_ids"] for r in rows] == [r["principle_ids"] for r in reference[2]]


def test_prefix_reuse_matches_reprefill_greedy(inputs, tmp_path):
  kw = dict(temperature=0.0, exemplars=False)
  reuse = read_sl_data(_run(tmp_path / "reuse", inputs, **kw))
  fresh = read_sl_data(_run(tmp_path / "fresh", inputs, prefix_reuse=False, **kw))
  drop = lambda rows: [{k: v for k, v in r.items() if k != "fallbacks"} for r in rows]  # noqa
  assert drop(reuse) == drop(fresh)
  # both paths ran: 4 turns per chain follow a cached one; random weights sample ids
  # that do not re-encode to themselves (unk, edge spaces), and those rows fall back
  assert 0 < sum(r["fallbacks"] for r in reuse) < 4 * len(PROMPTS)


def test_latest_context_critiques_only_the_latest_revision(inputs, tmp_path):
  """context='latest': round r > 0 sees the request and the previous revision as the
  answer. Reference: each turn re-sampled greedily from the template prompt built by hand."""
  from cai_jax.data.dialogue import Turn
  from cai_jax.sampling import Sampler
  kw = dict(temperature=0.0, exemplars=False, num_rounds=3)
  full = read_sl_data(_run(tmp_path / "full", inputs, **kw))
  latest = read_sl_data(_run(tmp_path / "latest", inputs, context="latest", **kw))
  const = cc.load_constitution(inputs["constitution_path"])
  tok = Tokenizer.load(models.store.SavedModel.open(inputs["model"]).info["tokenizer_path"])
  sampler = Sampler(*models.store.SavedModel.open(inputs["model"]).load())

  def greedy(prompt):
    out = sampler.generate([prompt.token_ids(tok)], max_new_tokens=8, temperature=0.0,
                           stop_tokens=tok.stop_ids)
    return tok.decode_generated(out.tokens[0])

  for f, r in zip(full, latest):
    assert r["initial"] == f["initial"]           # round 0 is the same exercise
    assert r["critiques"][0] == f["critiques"][0] and r["revisions"][0] == f["revisions"][0]
    principles = {p.id: p for p in const.critique_principles}
    for rnd in (1, 2):
      p = principles[r["principle_ids"][rnd]]
      conv = (Turn(HUMAN, PROMPTS[r["index"]]), Turn(ASSISTANT, r["revisions"][rnd - 1]))
      crit = cc.critique_prompt(conv, p)
      assert r["critiques"][rnd] == greedy(crit)
      assert r["revisions"][rnd] == greedy(cc.revision_prompt(
          crit.conversation(r["critiques"][rnd]), p))
  assert any(r["revisions"][1:] != f["revisions"][1:] for f, r in zip(full, latest))
  with pytest.raises(ValueError, match="context"):
    _run(tmp_path / "bad", inputs, context="last")


def test_sl_conversations_mix(inputs, reference, tmp_path):
  helpful = _run(tmp_path / "helpful", inputs, num_rounds=0)
  assert all(r["final"] == r["initial"] for r in read_sl_data(helpful))
  out = sl_conversations(str(tmp_path / "sft"), sl_data=str(reference[0]),
                         helpful_data=helpful, helpful_ratio=0.5, skip_malformed=False)
  convs = read_conversations(out)
  stats = json.loads((tmp_path / "sft" / "sl_conversations.json").read_text())
  assert stats == {"red_team": 10, "red_team_skipped": 0, "helpful": 5, "total": 15}
  assert len(convs) == 15 and all([t.role for t in c] == [HUMAN, ASSISTANT] for c in convs)
  finals = {r["final"] for r in reference[2]}
  assert sum(c[1].text in finals for c in convs) >= 10


def test_a_bad_model_path_fails_before_any_shard_state(inputs, tmp_path):
  bad = dict(inputs, model=str(tmp_path / "no_such_model"))
  with pytest.raises(FileNotFoundError, match="generate_sl.model .*no_such_model"):
    generate_sl(str(tmp_path / "run"), **bad, num_rounds=0, max_new_tokens=4, shard_size=4,
                batch_size=4)
  assert not (tmp_path / "run" / "shards").exists()   # nothing a rerun would trust
  rows = read_sl_data(generate_sl(str(tmp_path / "run"), **inputs, num_rounds=0,
                                  max_new_tokens=4, shard_size=4, batch_size=4))
  assert len(rows) == len(PROMPTS)


def test_sl_conversations_trims_truncated_answers(tmp_path):
  """A final answer cut by the budget keeps its complete sentences (or is left out)."""
  rows = [dict(index=i, id=f"r{i}", prompt=f"\n\nHuman: q{i}?", initial=f"first {i}.",
               principle_ids=["p"], rounds=[0], critiques=["c."], revisions=[rev], final=rev,
               flags=flags, malformed=bool(flags), num_generated_tokens=9, fallbacks=0)
          for i, (rev, flags) in enumerate([
              ("Done. Whole.", []),
              ("One sentence. Two sentences! And a cut", ["revision.0:truncated"]),
              ("no sentence end at all", ["revision.0:truncated"]),
              ("", ["revision.0:empty"])])]
  write_records(SL_DATA, {"train": rows}, sl_features(), str(tmp_path / "rec"))
  data = str(tmp_path / "rec" / SL_DATA)
  out = sl_conversations(str(tmp_path / "a"), sl_data=data, trim_truncated=True)
  answers = sorted(c[1].text for c in read_conversations(out))
  assert answers == ["Done. Whole.", "One sentence. Two sentences!"]
  out = sl_conversations(str(tmp_path / "b"), sl_data=data)   # the default drops them
  assert [c[1].text for c in read_conversations(out)] == ["Done. Whole."]
