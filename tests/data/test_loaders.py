"""grain loaders over record sets: sharding, per-epoch shuffling, tokenization, state."""
import json
import tempfile

import grain
import numpy as np
import pytest

from cai_jax.data import builders, dialogue, loaders, packing, records
from cai_jax.data.dialogue import Turn

SEQ_LEN = 64


@pytest.fixture(scope="module")
def sources(tmp_path_factory, dialogues):
  """A dialogue record set (80 conversations) and a preference-pair set, on disk."""
  root = tmp_path_factory.mktemp("loaders")
  with pytest.MonkeyPatch.context() as mp:
    (root / "tmp").mkdir()
    mp.setenv("TMPDIR", str(root / "tmp"))
    mp.setattr(tempfile, "tempdir", str(root / "tmp"))
    convs = builders.write_records(
        "corpus", [builders.dialogue_example(t, id=str(i)) for i, t in enumerate(dialogues[:80])],
        builders.dialogue_features(), str(root / "data"))["train"]
    pairs_path = root / "pairs.jsonl"
    with open(pairs_path, "w") as f:
      for i, t in enumerate(dialogues[:10]):
        rejected = "I won't tell you anything about that."
        f.write(json.dumps({"chosen": dialogue.render(t[:2]),
                            "rejected": dialogue.render([t[0], Turn("Assistant", rejected)]),
                            "p_chosen": 0.1 * i}) + "\n")
    pairs = builders.build_preference_pairs(str(pairs_path), str(root / "data"))["train"]
  return {"convs": convs, "pairs": pairs, "dialogues": dialogues[:80]}


def _one_shard():
  return grain.sharding.ShardOptions(0, 1)


def test_examples_reshuffle_every_epoch_with_a_seed():
  def take(seed, **kw):
    return list(loaders.examples(list(range(20)), seed=seed, num_epochs=2,
                                 shard_options=_one_shard(), **kw))
  a = take(0)
  assert len(a) == 40 and sorted(a[:20]) == sorted(a[20:]) == list(range(20))
  assert a[:20] != a[20:] and a[:20] != list(range(20))  # new permutation per epoch
  assert take(0) == a and take(1) != a
  assert take(0, shuffle=False) == list(range(20)) * 2


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_process_shards_are_disjoint(drop_remainder):
  n, count = 103, 4
  shards = [list(loaders.examples(
      list(range(n)), seed=5, num_epochs=1,
      shard_options=grain.sharding.ShardOptions(i, count, drop_remainder))) for i in range(count)]
  seen = [x for s in shards for x in s]
  assert len(seen) == len(set(seen))
  if drop_remainder:
    assert [len(s) for s in shards] == [n // count] * count
  else:
    assert sorted(seen) == list(range(n))


def test_default_shard_is_this_process():
  opts = loaders.process_shard_options()
  assert (opts.shard_index, opts.shard_count, opts.drop_remainder) == (0, 1, True)
  with pytest.raises(ValueError, match="empty"):
    loaders.examples([1], shard_options=grain.sharding.ShardOptions(1, 2))


def test_padded_batches_match_the_tokenizer(sources, tiny_tokenizer):
  ds = loaders.dialogue_loader(sources["convs"], tiny_tokenizer, seq_len=SEQ_LEN, batch_size=8,
                               shuffle=False, num_epochs=1, shard_options=_one_shard())
  batches = list(ds)
  assert len(batches) == 10  # 80 / 8
  b = batches[1]
  for k in packing.FIELDS:
    assert b[k].shape == (8, SEQ_LEN) and b[k].dtype == np.int32
  assert b["num_truncated"].shape == (8,)
  for r in range(8):
    enc = tiny_tokenizer.encode_dialogue(sources["dialogues"][8 + r])
    n = min(len(enc.ids), SEQ_LEN)
    assert b["tokens"][r, :n].tolist() == enc.ids[:n]
    assert b["loss_mask"][r, :n].tolist() == enc.loss_mask[:n]
    assert np.all(b["tokens"][r, n:] == tiny_tokenizer.pad_id)
    assert np.all(b["segment_ids"][r] == (np.arange(SEQ_LEN) < n))
    assert b["num_truncated"][r] == (len(enc.ids) > SEQ_LEN)
  # loss on assistant/critique/revision bodies only
  masked = b["tokens"][0][b["loss_mask"][0] == 1]
  body = sources["dialogues"][8][1].text
  assert tiny_tokenizer.decode(masked).startswith(body)


def test_packed_loader_keeps_every_example(sources, tiny_tokenizer):
  ds = loaders.dialogue_loader(sources["convs"], tiny_tokenizer, seq_len=SEQ_LEN, batch_size=1,
                               shuffle=False, num_epochs=1, pack=True, num_open_rows=2,
                               shard_options=_one_shard())
  segments, truncated, rows = [], 0, 0
  for b in ds:
    rows += 1
    truncated += int(b["num_truncated"].sum())
    seg, tok, mask = b["segment_ids"][0], b["tokens"][0], b["loss_mask"][0]
    for s in range(1, seg.max() + 1):
      segments.append((tok[seg == s].tolist(), mask[seg == s].tolist()))
  want = [tiny_tokenizer.encode_dialogue(t) for t in sources["dialogues"]]
  assert sorted(segments) == sorted((e.ids[:SEQ_LEN], e.loss_mask[:SEQ_LEN]) for e in want)
  assert truncated == sum(len(e.ids) > SEQ_LEN for e in want)
  assert rows < len(want)


@pytest.mark.parametrize("pack", [False, True])
def test_state_restore_equals_uninterrupted_iteration(sources, tiny_tokenizer, pack):
  def make():
    return loaders.dialogue_loader(sources["convs"], tiny_tokenizer, seq_len=SEQ_LEN,
                                   batch_size=4, seed=3, pack=pack, shard_options=_one_shard())
  it = iter(make())
  for _ in range(25):  # past the first epoch (80 examples / 4 = 20 padded batches)
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  reference = [next(it) for _ in range(8)]
  resumed = iter(make())
  resumed.set_state(state)
  for want in reference:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_preference_loader(sources, tiny_tokenizer):
  ds = loaders.preference_loader(sources["pairs"], tiny_tokenizer, seq_len=SEQ_LEN, batch_size=5,
                                 shuffle=False, num_epochs=1, shard_options=_one_shard())
  batches = list(ds)
  assert len(batches) == 2
  b = batches[0]
  assert b["tokens"].shape == b["loss_mask"].shape == (5, 2, SEQ_LEN)
  np.testing.assert_allclose(b["p_chosen"], 0.1 * np.arange(5), rtol=1e-6)
  for r in range(5):
    chosen = records.to_text(sources["pairs"][r]["chosen"])
    for j, text in enumerate((chosen, "I won't tell you anything about that.")):
      resp = b["tokens"][r, j][b["loss_mask"][r, j] == 1]
      assert resp[-1] == tiny_tokenizer.eos_id  # the final response and its end of turn
      assert tiny_tokenizer.decode(resp) == text


def test_example_turns():
  assert loaders.example_turns({"text": "\n\nHuman: a\n\nAssistant: b"})[1] == Turn(
      "Assistant", "b")
  with pytest.raises(ValueError, match="no conversation"):
    loaders.example_turns({"id": b"x"})
