"""``cai_jax.paths``: local paths and ``gs://`` URLs through one library, and a run whose
workdir is a ``gs://`` URL writing everything into the bucket and nothing in the cwd.

The bucket is offline: ``gs://`` is served by a local folder. etils.epath's ``gs`` backend
is replaced by one that maps ``gs://B/P`` to ``<root>/B/P``; Orbax keeps taking its GCS
code paths (it sees ``gs://``: commit_success.txt instead of renames), except two that
need the network: TensorStore's ``gcs`` kvstore driver (given the same local folder
through the ``file`` driver instead) and the bucket's hierarchical-namespace lookup
(google-cloud-storage; answered "no").
"""
import io
import json
import os
import threading

import pytest
from etils import epath

from bucket_store import tree as _tree
from cai_jax import paths
from cai_jax import workdir as workdir_lib


def test_the_fake_bucket_is_what_epath_sees(bucket):
  p = epath.Path("gs://b/x/y.txt")
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_text("hi")
  assert (bucket.local("gs://b/x/y.txt")) == os.path.join(bucket.root, "b", "x", "y.txt")
  assert open(bucket.local("gs://b/x/y.txt"), encoding="utf-8").read() == "hi"
  assert _tree(".") == []


def test_is_local_absolute_join():
  assert paths.is_local("a/b") and paths.is_local("/a/b") and paths.is_local("~/x")
  assert not paths.is_local("gs://b/x") and not paths.is_local("s3://b")
  assert paths.absolute("gs://bucket/run/") == "gs://bucket/run"
  assert paths.absolute("gs://bucket/run") == "gs://bucket/run"
  assert paths.absolute("rel/x") == os.path.abspath("rel/x")
  assert paths.absolute("~/x") == os.path.expanduser("~/x")
  assert paths.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert paths.join("/a", "b") == "/a/b"
  assert paths.relpath("gs://b/run/model/x", "gs://b/run") == "model/x"
  assert paths.dirname("gs://b/run/x.json") == "gs://b/run"
  assert paths.basename("gs://b/run/") == "run"


@pytest.mark.parametrize("where", ["local", "gs"])
def test_the_library_on_both_kinds(where, tmp_path, bucket):
  root = str(tmp_path / "local") if where == "local" else "gs://b/lib"
  d = paths.join(root, "sub")
  assert not paths.exists(d)
  paths.makedirs(d)
  paths.makedirs(d)   # exists: fine
  assert paths.isdir(d) and not paths.isfile(d)
  f = paths.join(d, "a.txt")
  paths.write_atomic(f, "one\n")
  assert paths.isfile(f) and paths.read_text(f) == "one\n" and paths.getsize(f) == 4
  paths.write_atomic(f, b"two\n")
  assert paths.read_bytes(f) == b"two\n"
  assert paths.listdir(d) == ["a.txt"]   # no temporary left behind
  with paths.open(paths.join(d, "b.json"), "w") as g:
    g.write("{}")
  assert paths.glob(d, "*.json") == [paths.join(d, "b.json")]
  assert sorted(r for r, _, _ in paths.walk(root)) == sorted([root, d])
  paths.replace(paths.join(d, "b.json"), paths.join(d, "c.json"))
  assert sorted(paths.listdir(d)) == ["a.txt", "c.json"]
  paths.copy(f, paths.join(root, "copy.txt"))
  assert paths.read_text(paths.join(root, "copy.txt")) == "two\n"
  paths.remove(paths.join(d, "c.json"))
  paths.remove(paths.join(d, "c.json"), missing_ok=True)
  with pytest.raises(FileNotFoundError):
    paths.remove(paths.join(d, "c.json"))
  paths.rmtree(d)
  paths.rmtree(d, missing_ok=True)
  assert not paths.exists(d) and paths.listdir(root) == ["copy.txt"]
  assert _tree(".") == []


def test_atomic_write_local_temporaries(tmp_path, monkeypatch):
  """Locally: a unique temporary next to the target, renamed over it; a failed write
  leaves neither a temporary nor a changed target."""
  names = {paths.temp_name(str(tmp_path / "x.json")) for _ in range(50)}
  assert len(names) == 50 and all(n.endswith(".tmp") for n in names)
  target = str(tmp_path / "x.json")
  paths.write_atomic(target, "old")
  seen = []
  real_replace = os.replace

  def fail(src, dst):
    seen.append(src)
    raise OSError("disk full")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError):
    paths.write_atomic(target, "new")
  monkeypatch.setattr(os, "replace", real_replace)
  assert os.path.dirname(seen[0]) == str(tmp_path) and seen[0] != target
  assert os.listdir(tmp_path) == ["x.json"] and paths.read_text(target) == "old"


def test_concurrent_atomic_writes_never_collide(tmp_path):
  target = str(tmp_path / "x.txt")
  errors = []

  def write(i):
    try:
      for _ in range(20):
        paths.write_atomic(target, f"writer {i}\n" * 100)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and os.listdir(tmp_path) == ["x.txt"]
  lines = paths.read_text(target).splitlines()
  assert len(lines) == 100 and len(set(lines)) == 1   # one writer's whole text


def test_atomic_write_on_the_store_writes_the_final_object_once(bucket):
  paths.write_atomic("gs://b/run/x.json", "{}\n")
  assert bucket.writes == ["gs://b/run/x.json"]


def test_workdir_helpers_on_the_store(bucket):
  wd = "gs://b/run"
  assert not workdir_lib.is_done(wd)
  workdir_lib.write_jsonl(paths.join(wd, "rows.jsonl"), [{"a": 1}, {"b": 2}])
  workdir_lib.write_json(paths.join(wd, "x.json"), {"k": [1]})
  assert workdir_lib.read_json(paths.join(wd, "x.json")) == {"k": [1]}
  workdir_lib.mark_done(wd, "step 3\n")
  assert workdir_lib.is_done(wd)
  assert json.load(open(bucket.local("gs://b/run/DONE"), encoding="utf-8")) == {
      "summary": "step 3"}
  assert paths.read_text("gs://b/run/rows.jsonl") == '{"a": 1}\n{"b": 2}\n'
  assert _tree(".") == []


def test_resolve_input_leaves_urls_alone(bucket, tmp_path):
  assert workdir_lib.resolve_input("gs://b/in/data.jsonl") == "gs://b/in/data.jsonl"
  (tmp_path / "cwd" / "here.txt").write_text("x")
  assert workdir_lib.resolve_input("here.txt") == str(tmp_path / "cwd" / "here.txt")
  from cai_jax.run import identity  # pylint: disable=import-outside-toplevel
  workdir_lib.write_text("gs://b/in/data.jsonl", "abc")
  local = tmp_path / "same.jsonl"
  local.write_text("abc")
  assert identity.content_id("gs://b/in/data.jsonl") == identity.content_id(str(local))


def _sft_inputs(tmp_path):
  """(local inputs folder with ``convs.jsonl``, its tokenizer, a tiny model config)."""
  from cai_jax import models  # pylint: disable=import-outside-toplevel
  from cai_jax.data.conversations import write_conversations  # pylint: disable=import-outside-toplevel
  from cai_jax.data.dialogue import ASSISTANT, HUMAN, Turn  # pylint: disable=import-outside-toplevel
  from cai_jax.data.tokenizer import train_tokenizer  # pylint: disable=import-outside-toplevel
  words = "apple river stone cloud bread lamp green quiet".split()
  convs = [[Turn(HUMAN, f"{w}?"), Turn(ASSISTANT, f"thank you {v}.")] for w in words
           for v in words]
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  write_conversations(str(inputs / "convs.jsonl"), convs)
  tok = train_tokenizer([f"{w}? thank you {v}." for w in words for v in words] * 4,
                        model_prefix=str(inputs / "tok"), vocab_size=300)
  return inputs, tok, models.ModelConfig(vocab_size=320, d_model=32, n_layers=1, n_heads=2,
                                         n_kv_heads=1, d_ff=64, tie_embeddings=True,
                                         max_seq_len=64)


def test_a_training_run_in_a_bucket(bucket, tmp_path, caplog):
  """A tiny SFT run with ``workdir=gs://...``: its DONE, RUN.json, metrics, event files,
  checkpoints and saved model land in the bucket and nothing in the cwd; a rerun skips;
  with DONE gone it resumes from the bucket's checkpoint."""
  from cai_jax.models.store import SavedModel  # pylint: disable=import-outside-toplevel
  from cai_jax.programs.sl_cai.sft import sft  # pylint: disable=import-outside-toplevel
  from cai_jax.train.metrics import read_jsonl  # pylint: disable=import-outside-toplevel
  inputs, tok, cfg = _sft_inputs(tmp_path)
  wd = "gs://b/runs/sft"

  def run():
    return sft(wd, train_data=str(inputs / "convs.jsonl"), tokenizer_path=tok.path,
               model_config=cfg, seq_len=48, batch_size=8, num_steps=4, ckpt_every=2,
               log_every=2, keep_checkpoints=2)

  caplog.set_level("INFO")
  assert run() == "gs://b/runs/sft/model"
  local = bucket.local(wd)
  names = set(os.listdir(local))
  assert {"DONE", "RUN.json", "metrics.jsonl", "checkpoints", "model"} <= names, names
  assert any(n.startswith("events.out.tfevents") for n in names), names
  assert not [n for n in names if n.endswith(".tmp") or n == "LOCK"], names
  assert [r["step"] for r in read_jsonl(paths.join(wd, "metrics.jsonl"))] == [2, 4]
  assert sorted(os.listdir(os.path.join(local, "checkpoints"))) == ["2", "4"]
  done = workdir_lib.read_json(paths.join(wd, "DONE"))
  assert done["program"] == "sft" and done["result_path"] == "model"
  saved = SavedModel.open(paths.join(wd, "model"))
  assert saved.path == "gs://b/runs/sft/model" and saved.info["num_steps"] == 4
  _, params = saved.load()
  assert params
  assert _tree(".") == []   # nothing in the cwd (no local "gs:" folder)

  caplog.clear()
  assert run() == "gs://b/runs/sft/model"
  assert "is complete, skipping" in caplog.text

  paths.remove(paths.join(wd, "DONE"))
  paths.remove(paths.join(wd, "model", "model.json"))
  caplog.clear()
  assert run() == "gs://b/runs/sft/model"
  assert "resumed from step 4" in caplog.text, caplog.text
  assert workdir_lib.is_done(wd) and SavedModel.exists(paths.join(wd, "model"))
  assert [r["step"] for r in read_jsonl(paths.join(wd, "metrics.jsonl"))] == [2, 4]
  assert _tree(".") == []


def test_the_lock_on_the_store(bucket):
  """On an object store the lock is best effort: taken, released, refused while another
  live run holds it, and refused when another run's write wins the race."""
  from cai_jax.run.lock import WorkdirBusyError, WorkdirLock  # pylint: disable=import-outside-toplevel
  wd = "gs://b/locked"
  with WorkdirLock(wd, "sft"):
    owner = workdir_lib.read_json(paths.join(wd, "LOCK"))
    assert owner["program"] == "sft" and owner["token"]
    with WorkdirLock(wd, "sft"):   # the same process again (nested program)
      pass
    assert paths.exists(paths.join(wd, "LOCK"))
  assert not paths.exists(paths.join(wd, "LOCK"))
  paths.write_atomic(paths.join(wd, "LOCK"), json.dumps(
      {"pid": 1, "host": "another-host", "program": "dpo", "since": "now"}))
  with pytest.raises(WorkdirBusyError, match="in use by dpo"):
    with WorkdirLock(wd, "sft"):
      pass
  paths.remove(paths.join(wd, "LOCK"))
  real_open = paths.open
  theirs = json.dumps({"pid": 1, "host": "another-host", "program": "dpo", "since": "now"})

  class Overwritten(io.StringIO):   # our LOCK write, then another host's lands over it
    def close(self):
      with real_open(bucket_lock, "w") as f:
        f.write(theirs)
      super().close()

  bucket_lock = paths.join(wd, "LOCK")

  def racing_open(path, mode="r"):
    return Overwritten() if path == bucket_lock and "w" in mode else real_open(path, mode)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(paths, "open", racing_open)
    with pytest.raises(WorkdirBusyError, match="in use by dpo"):
      with WorkdirLock(wd, "sft"):
        pass


def test_metrics_in_a_bucket(bucket):
  """metrics.jsonl reaches the bucket (appending across writers, cut on resume) and the
  event files are copied there from a local staging folder that is removed."""
  from cai_jax.train.metrics import MetricsWriter, read_jsonl  # pylint: disable=import-outside-toplevel
  with MetricsWriter("gs://b/m", process_index=0) as w:
    w.write(1, {"loss": 2.0})
    w.write(2, {"loss": 1.5})
    staging = w._staging  # pylint: disable=protected-access
    assert staging and os.path.isdir(staging) and not staging.startswith(bucket.root)
  assert not os.path.exists(staging)
  assert [r["step"] for r in read_jsonl("gs://b/m/metrics.jsonl")] == [1, 2]
  assert any(n.startswith("events.out.tfevents") for n in paths.listdir("gs://b/m"))
  with MetricsWriter("gs://b/m", process_index=0, tensorboard=False) as w:
    w.write(3, {"loss": 1.0})
  assert [r["step"] for r in read_jsonl("gs://b/m/metrics.jsonl")] == [1, 2, 3]
  with MetricsWriter("gs://b/m", process_index=0, tensorboard=False, resume_step=1) as w:
    assert [r["step"] for r in w.rows] == [1]
    w.write(2, {"loss": 0.5})
  assert [r["loss"] for r in read_jsonl("gs://b/m/metrics.jsonl")] == [2.0, 0.5]
  assert _tree(".") == []


@pytest.mark.parametrize("where", ["local", "gs"])
def test_copytree_split_and_folder_replace(where, tmp_path, bucket):
  root = str(tmp_path / "local") if where == "local" else "gs://b/tree"
  src = paths.join(root, "src")
  paths.write_atomic(paths.join(src, "a.txt"), "a")
  paths.write_atomic(paths.join(src, "sub", "b.bin"), b"b")
  paths.makedirs(paths.join(src, "empty"))
  paths.copytree(src, paths.join(root, "copy"))
  with pytest.raises(FileExistsError):
    paths.copytree(src, paths.join(root, "copy"))
  assert paths.read_bytes(paths.join(root, "copy", "sub", "b.bin")) == b"b"
  assert paths.isdir(paths.join(root, "copy", "empty"))
  assert paths.split(paths.join(root, "copy") + "/") == (root, "copy")
  paths.replace(paths.join(root, "copy"), paths.join(root, "moved"))
  assert sorted(paths.listdir(root)) == ["moved", "src"]
  assert paths.read_text(paths.join(root, "moved", "a.txt")) == "a"
  assert _tree(".") == []


def test_hf_folders_in_a_bucket(bucket):
  """``to_hf`` writes a HF folder (sharded, float32 and bfloat16) into the bucket and
  ``from_hf`` reads it back from there, tensor for tensor."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from cai_jax import models  # pylint: disable=import-outside-toplevel
  from cai_jax.models import hf  # pylint: disable=import-outside-toplevel
  cfg = models.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                           d_ff=32, tie_embeddings=False)
  ours = models.merge(*models.init(cfg, seed=0))
  for dtype, shard in ((jnp.float32, 8_000), (jnp.bfloat16, 2**30)):
    hf.to_hf(ours, "gs://b/hf", dtype=dtype, max_shard_bytes=shard)
    names = paths.listdir("gs://b/hf")
    assert (hf._INDEX in names) == (shard < 2**30), names  # pylint: disable=protected-access
    back = hf.from_hf("gs://b/hf")
    want = jax.tree.map(lambda x, d=dtype: x.astype(d).astype(jnp.float32),
                        models.split(ours)[1])
    jax.tree.map(np.testing.assert_array_equal, models.split(back)[1], want)
  assert _tree(".") == []


def test_sft_until_fit_in_a_bucket(bucket, tmp_path):
  """``sft_until_fit`` with a ``gs://`` workdir: candidates, fit answers, schedule.json and
  the chosen model (copied inside the bucket, then renamed) land there, none in the cwd."""
  import functools  # pylint: disable=import-outside-toplevel
  from cai_jax import models  # pylint: disable=import-outside-toplevel
  from cai_jax.models.store import SavedModel, save_model  # pylint: disable=import-outside-toplevel
  from cai_jax.programs.sl_cai.fit import sft_until_fit  # pylint: disable=import-outside-toplevel
  from cai_jax.programs.sl_cai.sft import sft  # pylint: disable=import-outside-toplevel
  inputs, tok, cfg = _sft_inputs(tmp_path)
  init = save_model(str(inputs / "init"), models.init(cfg, seed=0)[1], cfg,
                    info={"tokenizer_path": tok.path})
  train = functools.partial(sft, seq_len=48, batch_size=8, ckpt_every=2, log_every=2)
  out = sft_until_fit("gs://b/fit", train=train, train_data=str(inputs / "convs.jsonl"),
                      init_model=init, schedules=[1, 2], threshold=1.0, fit_n=2,
                      fit_max_new_tokens=3)
  assert out == "gs://b/fit/model"
  schedule = workdir_lib.read_json("gs://b/fit/schedule.json")
  assert schedule["chosen_steps"] == 2 and [t["model"] for t in schedule["tried"]] == [
      "steps1/model", "steps2/model"]
  assert {"model", "steps1", "steps2", "schedule.json"} <= set(paths.listdir("gs://b/fit"))
  assert paths.isfile("gs://b/fit/steps2/fit/answers.jsonl")
  assert SavedModel.open(out).info["schedule"]["num_steps"] == 2
  assert not paths.exists("gs://b/fit/model.tmp") and _tree(".") == []
