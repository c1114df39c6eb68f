"""Issue 17: a run never silently mixes configurations, never trusts a stale or corrupted
artifact, and bad input fails with a clear error before work. One test (or more) per
reproduced case; case 1 is in test_sft.py (through the binary), case 5 in
tests/sampling/test_length_limits.py, case 8 in tests/data/test_reader_errors.py, and
case 9's lost PM evaluation in test_preference_model.py."""
import json
import os
import socket
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from cai_jax import models
from cai_jax import workdir as workdir_lib
from cai_jax.data.conversations import write_conversations
from cai_jax.models.store import SavedModel, save_model
from cai_jax.pipeline import pipeline
from cai_jax.programs.rl_cai.ppo import ppo
from cai_jax.programs.sl_cai.sft import sft
from cai_jax.run import CorruptArtifactError, RunMismatchError, WorkdirBusyError, program
from cai_jax.train.checkpoint import Checkpointer, abstract_like
from cai_jax.train.loop import DivergenceError
from cai_jax.train.metrics import MetricsWriter, read_jsonl

# --- Case 2: the pipeline reruns phases whose configuration or upstream changed -------

CALLS = []


@program("produce")
def produce(workdir, *, n: int = 3):
  CALLS.append("produce")
  out = os.path.join(workdir, "lines.txt")
  workdir_lib.write_text(out, "".join(f"line {i}\n" for i in range(n)))
  return out


@program("consume", inputs=("src",))
def consume(workdir, *, src: str = "produce/lines.txt"):
  CALLS.append("consume")
  with open(src, encoding="utf-8") as f:
    n = len(f.readlines())
  if not n:
    raise RuntimeError("consume: no lines")   # an empty output is an error, not DONE
  return {"lines": n}


def test_pipeline_reruns_changed_phases_and_their_downstream(tmp_path):
  # the lambdas are not decorated themselves: wrap them so the pipeline sees programs
  def phases(n):
    p = lambda workdir: produce(workdir, n=n)   # noqa: E731
    p.cai_program = "produce"
    return {"produce": p, "consume": consume}

  root = str(tmp_path / "exp")
  CALLS.clear()
  pipeline(root, phases=phases(3))
  assert CALLS == ["produce", "consume"]
  CALLS.clear()
  pipeline(root, phases=phases(3))           # same configuration: both skipped
  assert CALLS == []
  CALLS.clear()
  pipeline(root, phases=phases(5))           # produce changed -> consume's input changed
  assert CALLS == ["produce", "consume"]
  assert json.loads(open(os.path.join(root, "consume", "DONE")).read())["result"] == {
      "lines": 5}
  CALLS.clear()
  with pytest.raises(RuntimeError, match="no lines"):
    pipeline(root, phases=phases(0))         # empty upstream output: not DONE downstream
  assert not os.path.exists(os.path.join(root, "consume", "DONE"))
  CALLS.clear()
  with pytest.raises(RunMismatchError, match=r"differs in \['n'\]"):
    pipeline(root, phases=phases(4), on_change="error")


def test_a_standalone_program_refuses_another_configuration(tmp_path):
  produce(str(tmp_path), n=2)
  with pytest.raises(RunMismatchError, match=r"differs in \['n'\].*--restart"):
    produce(str(tmp_path), n=3)
  from cai_jax.run import policy   # pylint: disable=import-outside-toplevel
  with policy("restart"):
    out = produce(str(tmp_path), n=3)
  assert open(out).read().count("line") == 3


def test_a_changed_input_file_is_a_changed_run(tmp_path):
  src = tmp_path / "src.txt"
  src.write_text("a\nb\n")
  assert consume(str(tmp_path / "run"), src=str(src)) == {"lines": 2}
  assert consume(str(tmp_path / "run"), src=str(src)) == {"lines": 2}   # skipped
  src.write_text("a\nb\nc\n")
  with pytest.raises(RunMismatchError, match=r"\['src'\]"):
    consume(str(tmp_path / "run"), src=str(src))


def test_a_damaged_output_is_not_trusted(tmp_path):
  out = produce(str(tmp_path), n=2)
  CALLS.clear()
  with open(out, "a", encoding="utf-8") as f:
    f.write("tampered\n")
  produce(str(tmp_path), n=2)                # DONE is there, but its output changed
  assert CALLS == ["produce"] and open(out).read().count("line") == 2


# --- Case 3: a failed first attempt does not block the corrected rerun ----------------

def test_a_failed_attempt_leaves_nothing_a_rerun_trusts(tmp_path):
  with pytest.raises(FileNotFoundError, match="consume.src .*missing.txt"):
    consume(str(tmp_path / "run"), src=str(tmp_path / "missing.txt"))
  good = tmp_path / "good.txt"
  good.write_text("x\n")
  assert consume(str(tmp_path / "run"), src=str(good)) == {"lines": 1}


# --- Case 4: corrupted checkpoints and models are refused, naming the file -----------

@pytest.fixture
def saved(tmp_path, lm_config):
  _, params = models.init(lm_config, seed=0)
  return save_model(str(tmp_path / "m"), params, lm_config, info={"init_from": "rel/x"})


def _largest_file(folder):
  files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def test_flipped_bytes_in_a_saved_model_are_refused(saved):
  path = _largest_file(os.path.join(saved, "params"))
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = bytearray(f.read(64))
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))
  with pytest.raises(CorruptArtifactError, match=f"{path} does not match its checksum"):
    SavedModel.open(saved).load()


def test_a_truncated_metadata_file_is_refused_naming_it(saved):
  meta = os.path.join(saved, "params", "_METADATA")
  with open(meta, "r+b") as f:
    f.truncate(10)
  with pytest.raises(CorruptArtifactError, match=f"{meta} has 10 bytes"):
    SavedModel.open(saved).load()


def test_a_corrupted_checkpoint_step_is_refused(tmp_path):
  state = {"w": jax.numpy.arange(4096.0)}
  with Checkpointer(str(tmp_path / "ckpt")) as ck:
    ck.save(1, state, force=True)
  step = str(tmp_path / "ckpt" / "1")
  assert os.path.isfile(os.path.join(step, "manifest.json"))
  with Checkpointer(str(tmp_path / "ckpt")) as ck:   # intact: restores
    np.testing.assert_array_equal(ck.restore(abstract_like(state))[0]["w"], state["w"])
  victim = _largest_file(step)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) - 7)
  with Checkpointer(str(tmp_path / "ckpt")) as ck:
    with pytest.raises(CorruptArtifactError, match=victim):
      ck.restore(abstract_like(state))


def test_lineage_paths_are_recorded_absolute(saved):
  assert SavedModel.open(saved).info["init_from"] == os.path.abspath("rel/x")


# --- Case 6: values that make no sense, and divergence -------------------------------

def test_nonsense_values_fail_before_work(tmp_path):
  kw = dict(policy_model=str(tmp_path / "none"), reward_model=str(tmp_path / "none"),
            prompts=str(tmp_path / "none.jsonl"))
  with pytest.raises(ValueError, match=r"ppo.kl_coef=-0.05: must be >= 0"):
    ppo(str(tmp_path / "a"), kl_coef=-0.05, **kw)
  with pytest.raises(TypeError, match=r"ppo.ckpt_every=2.5: expected int"):
    ppo(str(tmp_path / "a"), ckpt_every=2.5, **kw)
  with pytest.raises(TypeError, match=r"sft.num_steps='40': expected int, got str"):
    sft(str(tmp_path / "a"), train_data="x", num_steps="40")
  assert not os.path.exists(tmp_path / "a")


def test_a_bad_optimizer_binding_fails_before_work(tmp_path, sft_data):
  data, tok = sft_data
  from cai_jax import gin_setup   # pylint: disable=import-outside-toplevel
  from cai_jax.train.optim import make_optimizer   # pylint: disable=import-outside-toplevel
  gin_setup.register()
  gin.parse_config("make_optimizer.learning_rate = 'fast'")
  try:
    with pytest.raises(TypeError, match=r"make_optimizer.learning_rate='fast': expected "
                                        r"float"):
      sft(str(tmp_path / "run"), train_data=data, tokenizer_path=tok,
          model_config=_tiny_config(), num_steps=2, batch_size=8, seq_len=40,
          optimizer=make_optimizer)
  finally:
    gin.clear_config()
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.fixture
def sft_data(tmp_path, polite_rude_conversations, words_tokenizer):
  data = str(tmp_path / "convs.jsonl")
  write_conversations(data, polite_rude_conversations)
  return data, words_tokenizer.path


def _tiny_config():
  return models.ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            d_ff=64, tie_embeddings=True, max_seq_len=128)


def test_a_finite_divergence_stops_the_run(tmp_path, sft_data):
  data, tok = sft_data
  from cai_jax.train.optim import make_optimizer   # pylint: disable=import-outside-toplevel
  huge = lambda total_steps: make_optimizer(total_steps=total_steps,  # noqa: E731
                                            learning_rate=1e6, clip_norm=None)
  with pytest.raises(DivergenceError, match="diverged at step"):
    sft(str(tmp_path / "run"), train_data=data, tokenizer_path=tok,
        model_config=_tiny_config(), num_steps=40, batch_size=8, seq_len=40,
        optimizer=huge, ckpt_every=1000)
  assert not os.path.exists(tmp_path / "run" / "DONE")
  assert not os.path.exists(tmp_path / "run" / "model")


# --- Case 7: two runs on one workdir ------------------------------------------------

def test_a_second_run_on_a_busy_workdir_fails_at_once(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    os.makedirs(tmp_path / "w")
    (tmp_path / "w" / "LOCK").write_text(json.dumps(
        {"pid": sleeper.pid, "host": socket.gethostname(), "program": "sft",
         "since": "now"}))
    with pytest.raises(WorkdirBusyError, match=f"in use by sft \\(pid {sleeper.pid}"):
      produce(str(tmp_path / "w"), n=1)
  finally:
    sleeper.kill()
    sleeper.wait()
  # the owner is gone: its stale lock is taken over, and released after the run
  produce(str(tmp_path / "w"), n=1)
  assert not (tmp_path / "w" / "LOCK").exists()


# --- Case 9: nested programs, stale temporaries, repeated metrics --------------------

KILL = []


@program("outer")
def outer(workdir):
  produce(workdir, n=2)   # nested on the same workdir: no DONE of its own
  assert not os.path.exists(os.path.join(workdir, "DONE"))
  if KILL:
    raise KeyboardInterrupt   # "killed" between the inner program and the outer's end
  workdir_lib.write_text(os.path.join(workdir, "fingerprint.txt"), "ok")
  return os.path.join(workdir, "fingerprint.txt")


def test_a_kill_between_inner_and_outer_completion_is_resumed(tmp_path):
  KILL.append(1)
  try:
    with pytest.raises(KeyboardInterrupt):
      outer(str(tmp_path))
  finally:
    KILL.clear()
  assert not (tmp_path / "DONE").exists()
  assert open(outer(str(tmp_path))).read() == "ok"
  assert json.loads((tmp_path / "DONE").read_text())["program"] == "outer"


def test_stale_temporaries_are_cleared_on_start(tmp_path):
  (tmp_path / "ckpt" / "3.orbax-checkpoint-tmp-99").mkdir(parents=True)
  (tmp_path / "records" / "incomplete.ABC").mkdir(parents=True)
  (tmp_path / "lines.txt.123.tmp").write_text("half")
  produce(str(tmp_path), n=1)
  assert not (tmp_path / "ckpt" / "3.orbax-checkpoint-tmp-99").exists()
  assert not (tmp_path / "records" / "incomplete.ABC").exists()
  assert not (tmp_path / "lines.txt.123.tmp").exists()


def test_metrics_rows_after_the_resume_step_are_dropped(tmp_path):
  with MetricsWriter(str(tmp_path), tensorboard=False) as w:
    for step in (2, 4, 6):
      w.write(step, {"loss": float(step)})
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 8, "lo')   # a line cut by the kill
  with MetricsWriter(str(tmp_path), tensorboard=False, resume_step=4) as w:
    w.write(6, {"loss": 6.5})
  assert [(r["step"], r["loss"]) for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [
      (2, 2.0), (4, 4.0), (6, 6.5)]


def test_a_folder_is_identified_by_its_content(tmp_path):
  """A data folder with its own (non-checksum) manifest.json is still hashed file by file;
  markers and logs do not count."""
  from cai_jax.run import content_id   # pylint: disable=import-outside-toplevel
  (tmp_path / "manifest.json").write_text('{"corpus": {"seed": 0}}')
  (tmp_path / "corpus.jsonl").write_text('{"a": 1}\n')
  before = content_id(str(tmp_path))
  (tmp_path / "DONE").write_text("{}")
  (tmp_path / "metrics.jsonl").write_text("{}\n")
  assert content_id(str(tmp_path)) == before
  (tmp_path / "corpus.jsonl").write_text('{"a": 2}\n')
  assert content_id(str(tmp_path)) != before
