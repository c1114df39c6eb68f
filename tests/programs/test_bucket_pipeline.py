"""Issue 14: a whole CAI pipeline whose root is a ``gs://`` URL, and record sets in a bucket.

The bucket is the offline ``gs://`` store of ``tests/bucket_store.py``. The pipeline is
the real-model experiment's shape on the tiny world of the program tests: SL-CAI
generation, its conversations, SFT, AI-feedback labeling, a preference model, DPO and a
pairwise evaluation. Phases find each other's outputs by root-relative paths
(``'label/records/pref_data'``, ``'pm/model'``); the record sets (ArrayRecord, local files
only) are built locally and uploaded, and read back from a local cache. Nothing may land
in the cwd; a rerun skips every phase.
"""
import json
import os

import gin
import pytest

from bucket_store import tree
from cai_jax import gin_setup
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.data import builders
from cai_jax.data import records
from cai_jax.models.store import SavedModel
from cai_jax.pipeline import pipeline

PHASES = ("gen", "sl_data", "sft", "label", "pm", "dpo", "eval")


def _config(lm, prompts) -> str:
  return f"""
pipeline.phases = {{'gen': @generate_sl, 'sl_data': @sl_conversations, 'sft': @sft,
                   'label': @label_preferences, 'pm': @preference_model, 'dpo': @dpo,
                   'eval': @pairwise_eval}}
MESH = (2, 1, 1)
generate_sl.model = '{lm}'
generate_sl.prompts_path = '{prompts}'
generate_sl.constitution_path = 'constitutions/default.json'
generate_sl.num_rounds = 1
generate_sl.exemplars = False
generate_sl.max_new_tokens = 6
generate_sl.batch_size = 4
generate_sl.mesh_shape = %MESH
sl_conversations.sl_data = 'gen'
sl_conversations.trim_truncated = True
sft.init_model = '{lm}'
sft.train_data = 'sl_data/sl_conversations.jsonl'
sft.num_steps = 2
sft.batch_size = 2
sft.seq_len = 40
sft.ckpt_every = 2
sft.log_every = 1
sft.mesh_shape = %MESH
label_preferences.policy_model = 'sft/model'
label_preferences.prompts_path = '{prompts}'
label_preferences.constitution_path = 'constitutions/default.json'
label_preferences.exemplars = False
label_preferences.max_new_tokens = 6
label_preferences.batch_size = 4
label_preferences.eval_fraction = 0.0
label_preferences.mesh_shape = %MESH
preference_model.train_data = 'label/records/pref_data'
preference_model.init_model = '{lm}'
preference_model.num_steps = 2
preference_model.batch_size = 4
preference_model.seq_len = 64
preference_model.ckpt_every = 2
preference_model.log_every = 1
preference_model.mesh_shape = %MESH
dpo.train_data = 'label/records/pref_data'
dpo.policy_model = 'sft/model'
dpo.num_steps = 2
dpo.batch_size = 4
dpo.seq_len = 64
dpo.ckpt_every = 2
dpo.log_every = 1
dpo.mesh_shape = %MESH
pairwise_eval.models = {{'sft': 'sft/model', 'dpo': 'dpo/model'}}
pairwise_eval.judge = 'pm/model'
pairwise_eval.red_team_prompts = '{prompts}'
pairwise_eval.helpful_prompts = '{prompts}'
pairwise_eval.max_prompts = 4
pairwise_eval.max_new_tokens = 4
pairwise_eval.batch_size = 2
pairwise_eval.judge_max_len = 64
pairwise_eval.num_bootstrap = 10
pairwise_eval.mesh_shape = %MESH
"""


@pytest.fixture
def configured(random_lm, words, tmp_path):
  prompts = tmp_path / "inputs" / "prompts.jsonl"
  prompts.parent.mkdir()
  prompts.write_text("".join(json.dumps({"prompt": f"{w} {words[(5 * i) % 12]}?"}) + "\n"
                             for i, w in enumerate(words)))
  gin_setup.register()
  gin.clear_config()
  gin.parse_config(_config(random_lm, prompts))
  yield
  gin.clear_config()


def test_a_cai_pipeline_with_a_bucket_root(bucket, configured, tmp_path, monkeypatch,
                                           capsys):
  monkeypatch.setenv("CAI_JAX_RECORDS_CACHE", str(tmp_path / "records_cache"))
  root = "gs://b/exp"
  timings = pipeline(root)
  assert list(timings) == list(PHASES)
  local = bucket.local(root)
  assert sorted(os.listdir(local)) == sorted(PHASES)   # the lock is gone
  for phase in PHASES:
    assert workdir_lib.is_done(paths.join(root, phase)), phase
  # the record sets are in the bucket, complete, and read back through the cache
  for phase, name in (("gen", "sl_data"), ("label", "pref_data")):
    files = os.listdir(os.path.join(local, phase, "records", name, "1.0.0"))
    assert "dataset_info.json" in files and any(".array_record" in f for f in files), files
    assert records.read_rows(paths.join(root, phase), name)
  # phases found each other under the root
  eval_results = workdir_lib.read_json(paths.join(root, "eval", "results.json"))
  assert set(eval_results["elo"]) >= {"sft", "dpo"}, eval_results["elo"]
  dpo = SavedModel.open(paths.join(root, "dpo", "model"))
  assert dpo.path == "gs://b/exp/dpo/model" and dpo.info["num_steps"] == 2
  assert tree(".") == []   # nothing in the cwd
  assert not [p for p in tree(local) if p.endswith(".tmp")]

  capsys.readouterr()
  assert pipeline(root) == {}   # a rerun skips every phase
  out = capsys.readouterr().out
  assert out.count("complete, skipped") == len(PHASES), out
  assert tree(".") == []


def test_record_sets_in_a_bucket(bucket, tmp_path, monkeypatch):
  """Built locally and uploaded with ``dataset_info.json`` last; reused without an upload;
  other content refused; a set whose upload stopped short is not complete (rebuilt); a
  fresh cache downloads the same rows."""
  monkeypatch.setenv("CAI_JAX_RECORDS_CACHE", str(tmp_path / "cache1"))
  rows = {"train": [{"id": f"r{i}", "text": f"row {i}"} for i in range(5)],
          "test": [{"id": "t0", "text": "held out"}]}
  features = {"id": builders.tfds.features.Text(), "text": builders.tfds.features.Text()}
  data_dir = "gs://b/sets"
  bucket.writes.clear()
  out = builders.write_records("notes", rows, features, data_dir)
  assert [records.to_text(out["train"][i]["text"]) for i in range(5)] == [
      f"row {i}" for i in range(5)]
  uploaded = [w for w in bucket.writes if "/notes/1.0.0/" in w]
  assert uploaded and uploaded[-1].endswith("dataset_info.json"), uploaded
  assert tree(".") == []

  bucket.writes.clear()
  builders.write_records("notes", rows, features, data_dir)   # same content: reused
  assert bucket.writes == []
  with pytest.raises(ValueError, match="different content"):
    builders.write_records("notes", {"train": rows["train"][:2]}, features, data_dir)

  monkeypatch.setenv("CAI_JAX_RECORDS_CACHE", str(tmp_path / "cache2"))
  got = records.read_rows("gs://b/sets/notes", "notes", "train")
  assert [r["text"] for r in got] == [f"row {i}" for i in range(5)]
  assert os.listdir(tmp_path / "cache2")   # downloaded into the fresh cache

  set_dir = os.path.join(bucket.local(data_dir), "notes", "1.0.0")
  os.remove(os.path.join(set_dir, "dataset_info.json"))   # an upload killed before the end
  with pytest.raises(FileNotFoundError, match="no record set 'notes'"):
    records.read_records(data_dir, "notes", split="train")
  out = builders.write_records("notes", rows, features, data_dir)
  assert len(out["test"]) == 1 and os.path.isfile(os.path.join(set_dir, "dataset_info.json"))
  assert tree(".") == []


def test_tokenizers_load_from_a_bucket(bucket, words_tokenizer, bpe_folder):
  """A sentencepiece model and a Hugging Face tokenizer folder copied into the bucket load
  from their ``gs://`` paths and encode as the local originals do."""
  from cai_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  paths.makedirs("gs://b/tok")
  paths.copy(words_tokenizer.path, "gs://b/tok/words.model")
  paths.copytree(bpe_folder, "gs://b/tok/bpe")
  text = "alpha beta? (A) (B) Human: Assistant:"
  for local, url in ((words_tokenizer.path, "gs://b/tok/words.model"),
                     (bpe_folder, "gs://b/tok/bpe")):
    ours, theirs = Tokenizer.load(url), Tokenizer.load(local)
    assert ours.path == url and type(ours) is type(theirs)
    assert ours.encode(text) == theirs.encode(text) and ours.vocab_size == theirs.vocab_size
  with pytest.raises(FileNotFoundError, match="gs://b/tok/missing"):
    Tokenizer.load("gs://b/tok/missing")
  assert tree(".") == []
