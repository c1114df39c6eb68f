"""The SFT program through the binary: trains, writes its configs and metrics, resumes
after an abrupt death to exactly the parameters of an uninterrupted run."""
import os
import re

import pytest

from cai_jax.data.conversations import write_conversations
from cai_jax.train.metrics import read_jsonl


@pytest.fixture(scope="module")
def sft_inputs(tmp_path_factory, polite_rude_conversations, words_tokenizer):
  data = str(tmp_path_factory.mktemp("sft_inputs") / "convs.jsonl")
  write_conversations(data, polite_rude_conversations)
  return data, words_tokenizer.path


def _run(run_main, workdir, data, tok, *, fault_after=None, steps=8, extra=(), flags=()):
  return run_main(workdir, ["runs/sft.gin", "models/toy_xs.gin"], [
      "sft.model_config=@ModelConfig()", "ModelConfig.vocab_size=320", "ModelConfig.d_model=32",
      "ModelConfig.d_ff=64", f"sft.train_data='{data}'", f"sft.tokenizer_path='{tok}'",
      f"sft.num_steps={steps}", "sft.batch_size=8", "sft.seq_len=40", "sft.ckpt_every=3",
      "sft.log_every=2", "make_optimizer.warmup_steps=2", "make_optimizer.learning_rate=3e-3",
      *extra], fault_after=fault_after, flags=flags)


def test_sft_binary_resumes_to_identical_params(run_main, sft_inputs, tmp_path,
                                                same_saved_params):
  data, tok = sft_inputs
  ref = _run(run_main, tmp_path / "ref", data, tok)
  assert ref.returncode == 0, ref.stderr[-3000:]
  died = _run(run_main, tmp_path / "resumed", data, tok, fault_after=7)
  assert died.returncode == 17, died.stderr[-3000:]
  assert not os.path.exists(tmp_path / "resumed" / "model" / "model.json")
  again = _run(run_main, tmp_path / "resumed", data, tok)
  assert again.returncode == 0, again.stderr[-3000:]
  # the loop dies right after step 7, maybe while the step-6 save is in flight; an
  # unfinished save is discarded, so the run resumes from step 6 or, failing that, 3
  assert re.search(r"resumed from step [36]\b", again.stderr), again.stderr[-4000:]

  saved = same_saved_params(tmp_path / "ref" / "model", tmp_path / "resumed" / "model")
  # metrics rows logged after the last checkpoint by the killed run are not repeated
  resumed = read_jsonl(str(tmp_path / "resumed" / "metrics.jsonl"))
  assert [r["step"] for r in resumed] == [2, 4, 6, 8]
  assert saved.kind == "lm"
  assert saved.info["program"] == "sft" and saved.info["num_steps"] == 8

  # configs and metrics were written; the loss fell
  for name in ("config.gin", "operative_config.gin"):
    assert "sft.num_steps = 8" in (tmp_path / "ref" / name).read_text()
  rows = read_jsonl(str(tmp_path / "ref" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4, 6, 8]
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "ref"))
  # a finished run is skipped when started again
  skip = _run(run_main, tmp_path / "ref", data, tok)
  assert skip.returncode == 0 and "is complete, skipping" in skip.stderr


def test_a_changed_configuration_is_not_resumed(run_main, sft_inputs, tmp_path):
  """Issue 17 case 1: killed after checkpoint 3, rerun with other data, batch size,
  sequence length and learning rate: refused, naming them; --restart starts over."""
  data, tok = sft_inputs
  other = str(tmp_path / "other.jsonl")
  with open(data, encoding="utf-8") as f, open(other, "w", encoding="utf-8") as g:
    g.write("".join(f.readlines()[::2]))
  died = _run(run_main, tmp_path / "run", data, tok, fault_after=4)
  assert died.returncode == 17, died.stderr[-3000:]
  changed = ["sft.batch_size=4", "sft.seq_len=48", "make_optimizer.learning_rate=1e-3",
             f"sft.train_data='{other}'"]
  mixed = _run(run_main, tmp_path / "run", data, tok, extra=changed)
  assert mixed.returncode != 0
  msg = re.search(r"RunMismatchError: (.*)", mixed.stderr).group(1)
  for key in ("batch_size", "seq_len", "optimizer", "train_data"):
    assert f"'{key}'" in msg, msg
  assert "--restart" in msg
  assert not os.path.exists(tmp_path / "run" / "model")
  fresh = _run(run_main, tmp_path / "run", data, tok, extra=changed, flags=["--restart"])
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  assert "resumed from step" not in fresh.stderr
  rows = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4, 6, 8]
