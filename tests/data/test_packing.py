"""Packing: first fit, row invariants, counted truncation, streaming state, model parity."""
import json
import random

import grain
import jax
import numpy as np
import pytest

from cai_jax import models
from cai_jax.data import packing
from cai_jax.losses.lm import token_logprobs

PAD = 0


def _random_examples(n, max_len, seed=0, vocab=50):
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    k = rng.randint(1, max_len)
    out.append(([rng.randrange(4, vocab) for _ in range(k)], [rng.randint(0, 1) for _ in range(k)]))
  return out


def _naive_first_fit(lengths, seq_len):
  rows, free = [], []
  for i, n in enumerate(lengths):
    r = next((r for r, f in enumerate(free) if f >= n), None)
    if r is None:
      rows.append([])
      free.append(seq_len)
      r = len(rows) - 1
    rows[r].append(i)
    free[r] -= n
  return rows


def _segments(row):
  """Per segment id of a row: (ids, mask, positions), checking layout invariants."""
  seg, tok, mask, pos = (row[k] for k in ("segment_ids", "tokens", "loss_mask", "positions"))
  used = int(np.sum(seg > 0))
  assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0), "padding only at the end"
  assert np.all(tok[used:] == PAD) and np.all(mask[used:] == 0) and np.all(pos[used:] == 0)
  assert np.all(np.diff(seg[:used]) >= 0) and np.all(np.diff(seg[:used]) <= 1)
  out = []
  for s in range(1, int(seg.max(initial=0)) + 1):
    idx = np.flatnonzero(seg == s)
    assert len(idx), f"segment {s} is empty"
    np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))  # restart at 0
    out.append((tok[idx].tolist(), mask[idx].tolist()))
  return out


def test_first_fit_matches_naive_reference():
  rng = random.Random(1)
  for trial in range(20):
    seq_len = rng.randint(4, 40)
    lengths = [rng.randint(1, seq_len) for _ in range(rng.randint(0, 60))]
    assert packing.first_fit(lengths, seq_len) == _naive_first_fit(lengths, seq_len), trial
  with pytest.raises(ValueError, match="outside"):
    packing.first_fit([3, 9], 8)


def test_pack_examples_invariants_and_counted_truncation():
  seq_len = 16
  examples = _random_examples(200, 24, seed=2)  # some longer than seq_len
  packed = packing.pack_examples(examples, seq_len, PAD)
  for k in packing.FIELDS:
    assert getattr(packed, k).dtype == np.int32 and getattr(packed, k).shape[1] == seq_len
  got = [seg for r in range(len(packed.tokens))
         for seg in _segments({k: getattr(packed, k)[r] for k in packing.FIELDS})]
  want = [(ids[:seq_len], mask[:seq_len]) for ids, mask in examples]
  assert sorted(got) == sorted(want)  # every example once, aligned masks, nothing else
  long = [len(ids) for ids, _ in examples if len(ids) > seq_len]
  st = packed.stats
  assert st.num_truncated == len(long) > 0
  assert st.num_truncated_tokens == sum(n - seq_len for n in long)
  assert st.num_tokens + st.num_truncated_tokens == sum(len(ids) for ids, _ in examples)
  assert st.num_tokens == int(np.sum(packed.segment_ids > 0))
  assert st.num_rows == len(packed.tokens) and 0.8 < st.fill <= 1.0
  assert packing.pack_examples([], 8, PAD).tokens.shape == (0, 8)


def test_bad_examples_raise():
  with pytest.raises(ValueError, match="example 1 is empty"):
    packing.pack_examples([([5], [1]), ([], [])], 8, PAD)
  with pytest.raises(ValueError, match="example 0: 2 ids but 1 loss-mask"):
    packing.pack_examples([([5, 6], [1])], 8, PAD)


def test_pad_example_and_next_token_weights():
  row = packing.pad_example([5, 6, 7], [0, 1, 1], 5, PAD)
  np.testing.assert_array_equal(row["tokens"], [5, 6, 7, 0, 0])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 0, 0])
  assert row["num_truncated"] == 0
  assert packing.pad_example([5, 6, 7], [1, 1, 1], 2, PAD)["num_truncated"] == 1
  seg = np.array([[1, 1, 2, 2, 0]])
  mask = np.array([[1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(packing.next_token_weights(mask, seg), [[1, 0, 1, 0]])


def _stream(examples, **kw):
  src = grain.MapDataset.source([{"ids": np.array(i, np.int32), "loss_mask": np.array(m, np.int32)}
                                 for i, m in examples]).to_iter_dataset()
  return packing.PackIterDataset(src, **kw)


@pytest.mark.parametrize("num_open_rows", [1, 3])
def test_stream_packer_keeps_every_token_and_restores_state(num_open_rows):
  seq_len = 12
  examples = _random_examples(60, 16, seed=3)
  rows = list(_stream(examples, seq_len=seq_len, pad_id=PAD, num_open_rows=num_open_rows))
  got = [seg for row in rows for seg in _segments(row)]
  assert sorted(got) == sorted((i[:seq_len], m[:seq_len]) for i, m in examples)
  assert sum(int(r["num_truncated"]) for r in rows) == sum(len(i) > seq_len for i, _ in examples)
  if num_open_rows == 1:  # greedy: examples stay in order
    assert got == [(i[:seq_len], m[:seq_len]) for i, m in examples]
  it = iter(_stream(examples, seq_len=seq_len, pad_id=PAD, num_open_rows=num_open_rows))
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
  rest = list(it)
  it2 = iter(_stream(examples, seq_len=seq_len, pad_id=PAD, num_open_rows=num_open_rows))
  it2.set_state(state)
  again = list(it2)
  assert len(again) == len(rest) == len(rows) - 5
  for a, b in zip(again, rest):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def _forward(cfg):
  graphdef, params = models.split(models.build(cfg, seed=0))

  @jax.jit
  def fwd(tokens, segment_ids, positions):
    kw = {} if segment_ids is None else {"segment_ids_bt": segment_ids, "positions_bt": positions}
    logits = models.merge(graphdef, params)(tokens[:, :-1], **kw)
    return -token_logprobs(logits, tokens[:, 1:])

  return fwd


def test_packed_batch_gives_the_same_per_example_loss_as_unpacked():
  cfg = models.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_seq_len=32)
  fwd = _forward(cfg)
  rng = random.Random(4)
  examples = []
  for _ in range(7):
    k = rng.randint(3, 11)
    examples.append(([2] + [rng.randrange(4, 64) for _ in range(k - 1)],
                     [0] + [rng.randint(0, 1) for _ in range(k - 1)]))
  seq_len = 24
  packed = packing.pack_examples(examples, seq_len, PAD)
  assert packed.stats.num_rows < len(examples)
  nll = np.asarray(fwd(packed.tokens, packed.segment_ids[:, :-1], packed.positions[:, :-1]))
  w = np.asarray(packing.next_token_weights(packed.loss_mask, packed.segment_ids))
  got = [float((nll[r] * w[r] * (packed.segment_ids[r, 1:] == s)).sum())
         for r in range(len(nll)) for s in range(1, int(packed.segment_ids[r].max()) + 1)]
  # unpacked: one example per row, right padding (causal, so it cannot leak backwards)
  order = [i for idx in packing.first_fit([len(e[0]) for e in examples], seq_len) for i in idx]
  rows = [packing.pad_example(*examples[i], seq_len, PAD) for i in order]
  tokens = np.stack([r["tokens"] for r in rows])
  mask = np.stack([r["loss_mask"] for r in rows])
  want = (np.asarray(fwd(tokens, None, None)) * mask[:, 1:]).sum(axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.isfinite(got).all() and min(got) > 0
