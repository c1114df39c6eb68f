"""Record-set helpers: content hashes, versions, metadata, reading back."""
import os
import tempfile

import numpy as np
import pytest

from cai_jax.data import builders, records


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
  """A data dir; TFDS's leftover temp folders go under tmp_path too."""
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  monkeypatch.setenv("TMPDIR", str(tmp))
  monkeypatch.setattr(tempfile, "tempdir", str(tmp))
  return str(tmp_path / "data")


def test_content_hash_is_canonical_and_sensitive():
  a = {"x": np.arange(3, dtype=np.int32), "t": "hi", "p": np.float32(0.5)}
  b = {"p": np.float32(0.5), "t": "hi", "x": np.arange(3, dtype=np.int32)}
  assert records.content_hash({"train": [a]}) == records.content_hash({"train": [b]})
  assert records.content_hash({"train": [a]}) != records.content_hash({"test": [a]})
  c = dict(a, x=np.arange(3, dtype=np.int64))  # same values, other dtype
  assert records.content_hash({"train": [a]}) != records.content_hash({"train": [c]})
  assert records.content_hash({"train": [a, a]}) != records.content_hash({"train": [a]})


def test_files_hash(tmp_path):
  p = tmp_path / "a.jsonl"
  p.write_text("one\n")
  h = records.files_hash({"train": str(p)})
  assert h == records.files_hash({"train": str(p)})
  assert h != records.files_hash({"test": str(p)})
  p.write_text("two\n")
  assert h != records.files_hash({"train": str(p)})


def test_versions_metadata_and_read_back(data_dir):
  feats = {"text": builders.tfds.features.Text()}
  for version, n in (("1.0.0", 2), ("1.10.0", 3), ("1.2.0", 4)):
    builders.write_records("notes", [{"text": f"v{version} #{i}"} for i in range(n)], feats,
                           data_dir, version=version, provenance={"gin": "x = 1"})
  # the highest version by number, not by string order
  assert records.dataset_dir(data_dir, "notes").endswith(os.path.join("notes", "1.10.0"))
  assert len(records.read_records(data_dir, "notes", split="train")) == 3
  assert len(records.read_records(data_dir, "notes", version="1.2.0")["train"]) == 4
  meta = records.read_metadata(data_dir, "notes", "1.0.0")
  assert meta["name"] == "notes" and meta["version"] == "1.0.0"
  assert meta["provenance"] == {"gin": "x = 1"} and len(meta["content_hash"]) == 64
  with pytest.raises(FileNotFoundError, match=r"1\.0\.0.*1\.10\.0"):
    records.dataset_dir(data_dir, "notes", "2.0.0")
  with pytest.raises(FileNotFoundError, match="none"):
    records.read_records(data_dir, "missing")


def test_provenance_must_be_json():
  with pytest.raises(ValueError, match="JSON"):
    records.make_metadata("x", "1.0.0", "h", provenance={"bad": object()})


def test_to_text():
  assert records.to_text(b"caf\xc3\xa9") == "café"
  assert records.to_text("x") == "x"
