"""The committed-or-trained rule of the toy world's model phases (``toy_feedback``):
a committed checkpoint is used only when its recorded fingerprint equals the data's."""
import json
import os

import pytest

from cai_jax import models
from cai_jax.models.store import SavedModel, save_model
from cai_jax.toyworld import phases

TINY = models.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                          head_dim=8, d_ff=32, max_seq_len=32)


def _data_dir(tmp_path):
  d = tmp_path / "data"
  d.mkdir()
  phases.write_conversations(str(d / "corpus.jsonl"), [])
  (d / "feedback.jsonl").write_text('{"turns": []}\n')
  # a real sentencepiece model: the fingerprint hashes its pieces
  texts = [f"word{i} judge answer option {i % 7}" for i in range(400)]
  phases.train_tokenizer(texts, model_prefix=str(d / "tokenizer"), vocab_size=300)
  return d


def _model(path, info=None):
  _, params = models.init(TINY, seed=0)
  return save_model(str(path), params, TINY, info=info)


@pytest.fixture
def setup(tmp_path):
  data = _data_dir(tmp_path)
  base = _model(tmp_path / "base")
  calls = []

  def train(*, workdir, init_model, train_data):
    calls.append((init_model, train_data))
    return _model(os.path.join(workdir, "model"))

  return data, base, calls, train


def _fingerprint(data, base):
  fp = phases.data_fingerprint(str(data), ("corpus.jsonl", "feedback.jsonl"))
  fp["init_manifest_sha256"] = phases.sha256_file(os.path.join(base, "manifest.json"))
  return fp


def test_trains_without_a_committed_model_and_stamps_the_fingerprint(tmp_path, setup):
  data, base, calls, train = setup
  out = phases.toy_feedback(str(tmp_path / "fb"), train=train, init_model=base,
                               data_dir=str(data), pretrained=None)
  assert calls == [(base, os.path.join(str(data), "feedback.jsonl"))]
  info = SavedModel.open(out).info
  assert {k: info[k] for k in _fingerprint(data, base)} == _fingerprint(data, base)
  assert len(info["feedback_sha256"]) == 64 and info["feedback_sha256"] != info["corpus_sha256"]


def test_uses_the_committed_model_only_when_every_fingerprint_matches(tmp_path, setup):
  data, base, calls, train = setup
  committed = _model(tmp_path / "committed", info=_fingerprint(data, base))
  out = phases.toy_feedback(str(tmp_path / "a"), train=train, init_model=base,
                               data_dir=str(data), pretrained=committed)
  assert calls == [] and SavedModel.open(out).info["copied_from"] == committed
  # another feedback corpus: trained anew
  (data / "feedback.jsonl").write_text('{"turns": []}\n{"turns": []}\n')
  phases.toy_feedback(str(tmp_path / "b"), train=train, init_model=base,
                      data_dir=str(data), pretrained=committed)
  assert len(calls) == 1


def test_another_base_model_is_trained_anew(tmp_path, setup):
  data, base, calls, train = setup
  committed = _model(tmp_path / "committed", info=_fingerprint(data, base))
  other_base = _model(tmp_path / "base2", info={"note": "another run"})
  phases.toy_feedback(str(tmp_path / "c"), train=train, init_model=other_base,
                      data_dir=str(data), pretrained=committed)
  assert len(calls) == 1
