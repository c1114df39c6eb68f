"""Two JAX processes on loopback run a small CAI pipeline as one job (issue 14).

The pipeline: SL-CAI generation, AI-feedback labeling, a preference model, DPO, a few PPO
iterations, SFT and a pairwise evaluation (answers split across processes), on the tiny world of the program tests (the preference model and DPO
learn its polite-over-rude pairs). It runs once as one process
with two fake CPU devices (the reference) and once as two processes with one device each
(``--coordinator_address``, ``--num_processes``, ``--process_id``), in which process 1 is
killed after the preference model: process 0 must fail within a bounded time (no hang),
and the same command must then resume and finish. Compared with the reference:
generation and labeling shards and evaluation answers (text equal, labels and judgments
to float round-off), the trained
parameters (max difference printed), exactly one copy of every output (one data set,
metrics rows once, DONE markers).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cai_jax.data.conversations import write_conversations
from cai_jax.models.store import SavedModel
from cai_jax.train.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHASES = ("gen", "label", "pm", "dpo", "ppo", "sft", "eval")
MODELS = ("pm", "dpo", "ppo", "sft")


def _gin(d, lm, tok, convs, prompts, pairs, reward) -> str:
  text = f"""
run.program = @pipeline
pipeline.phases = {{'gen': @generate_sl, 'label': @label_preferences,
                   'pm': @preference_model, 'dpo': @dpo, 'ppo': @ppo, 'sft': @sft,
                   'eval': @pairwise_eval}}
generate_sl.model = '{lm}'
generate_sl.prompts_path = '{prompts}'
generate_sl.constitution_path = 'constitutions/default.json'
generate_sl.num_rounds = 1
generate_sl.exemplars = False
generate_sl.max_new_tokens = 6
generate_sl.shard_size = 4
generate_sl.batch_size = 4
label_preferences.policy_model = '{lm}'
label_preferences.prompts_path = '{prompts}'
label_preferences.constitution_path = 'constitutions/default.json'
label_preferences.exemplars = False
label_preferences.max_new_tokens = 6
label_preferences.shard_size = 4
label_preferences.batch_size = 4
label_preferences.eval_fraction = 0.0
preference_model.train_data = '{pairs}'
preference_model.init_model = '{lm}'
preference_model.num_steps = 4
preference_model.batch_size = 4
preference_model.seq_len = 64
preference_model.ckpt_every = 2
preference_model.log_every = 2
dpo.train_data = '{pairs}'
dpo.policy_model = '{lm}'
dpo.num_steps = 4
dpo.batch_size = 4
dpo.seq_len = 64
dpo.ckpt_every = 2
dpo.log_every = 2
ppo.policy_model = '{lm}'
ppo.reward_model = '{reward}'
ppo.prompts = '{prompts}'
ppo.num_iterations = 2
ppo.rollout_batch = 8
ppo.minibatch_size = 4
ppo.max_new_tokens = 6
ppo.ckpt_every = 1
sft.init_model = '{lm}'
sft.tokenizer_path = '{tok}'
sft.train_data = '{convs}'
sft.num_steps = 4
sft.batch_size = 8
sft.seq_len = 40
sft.ckpt_every = 2
sft.log_every = 2
make_optimizer.learning_rate = 3e-3
pairwise_eval.models = {{'base': '{lm}', 'dpo': 'dpo/model', 'sft': 'sft/model'}}
pairwise_eval.judge = 'pm/model'
pairwise_eval.red_team_prompts = '{prompts}'
pairwise_eval.helpful_prompts = '{prompts}'
pairwise_eval.max_prompts = 6
pairwise_eval.max_new_tokens = 6
pairwise_eval.batch_size = 2
pairwise_eval.judge_max_len = 64
pairwise_eval.num_bootstrap = 20
"""
  path = d / "mp.gin"
  path.write_text(text)
  return str(path)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, gin_file, *, processes: int, devices: int, logs, flags=()) -> list:
  """Starts the job's processes; ``logs``: a folder for their output."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={devices} "
      "--xla_cpu_collective_call_terminate_timeout_seconds=30"))
  cmd = [sys.executable, "-m", "cai_jax.main", f"--workdir={workdir}",
         f"--gin_file={gin_file}",
         f"--compilation_cache={os.environ.get('CAI_JAX_TEST_XLA_CACHE', '')}", *flags]
  port = _free_port()
  procs = []
  for i in range(processes):
    job = [] if processes == 1 else [
        f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
        f"--process_id={i}", "--heartbeat_timeout=5"]
    log = open(os.path.join(logs, f"{os.path.basename(workdir)}.{len(os.listdir(logs))}.log"),
               "w")
    procs.append((subprocess.Popen(cmd + job, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT), log))
  return procs


def _wait(procs, timeout: float) -> list[int]:
  """Exit codes; a process still running at the deadline is killed and fails the test."""
  deadline, codes = time.monotonic() + timeout, []
  for p, log in procs:
    try:
      codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
      for q, _ in procs:
        q.kill()
      pytest.fail(f"a process ran past {timeout} s (hang?); log {log.name}")
    finally:
      log.close()
  return codes


def _tail(logs, name: str) -> str:
  return "\n".join(open(os.path.join(logs, f)).read()[-3000:]
                   for f in sorted(os.listdir(logs)) if f.startswith(name))


def _rows(path):
  return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, random_lm, words_tokenizer, polite_rude_conversations, words,
         write_pairs):
  """(one-process root, two-process root, logs folder, seconds process 0 took to fail)."""
  d = tmp_path_factory.mktemp("multiprocess")
  convs = str(d / "convs.jsonl")
  write_conversations(convs, polite_rude_conversations[:64])
  prompts = d / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"{w} {words[(3 * i) % 12]}?"}) + "\n"
                             for i, w in enumerate(words)))
  one, two = str(d / "one"), str(d / "two")
  # The preference model and DPO learn the polite-over-rude pairs (clear gradients: on
  # the random judge's labels, all near 0.5, Adam's normalisation would turn float
  # round-off into visible parameter differences); PPO's reward in both runs is the
  # one-process run's preference model, so PPO is compared on the same reward.
  gin_file = _gin(d, random_lm, words_tokenizer.path, convs, prompts,
                  write_pairs(d / "pairs.jsonl", 64, 0), os.path.join(one, "pm", "model"))
  logs = str(d / "logs")
  os.makedirs(logs)

  codes = _wait(_launch(one, gin_file, processes=1, devices=2, logs=logs), 600)
  assert codes == [0], _tail(logs, "one")

  # Two processes; process 1 is killed once the preference model is done.
  procs = _launch(two, gin_file, processes=2, devices=1, logs=logs)
  deadline = time.monotonic() + 600
  while not os.path.exists(os.path.join(two, "pm", "DONE")):
    if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
      for p, _ in procs:
        p.kill()
      pytest.fail("the two-process run stopped before the pm phase:\n" + _tail(logs, "two"))
    time.sleep(0.2)
  procs[1][0].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  codes = _wait(procs, 120)
  failed_after = time.monotonic() - killed
  assert codes[0] != 0 and codes[1] == -signal.SIGKILL, (codes, _tail(logs, "two"))
  assert not os.path.exists(os.path.join(two, "ppo", "DONE"))

  codes = _wait(_launch(two, gin_file, processes=2, devices=1, logs=logs), 600)
  assert codes == [0, 0], _tail(logs, "two")
  return one, two, logs, failed_after


def test_a_dead_process_fails_the_job_and_a_rerun_resumes(runs):
  one, two, logs, failed_after = runs
  print(f"process 0 failed {failed_after:.1f} s after process 1 was killed")
  assert failed_after < 100
  resumed = [open(os.path.join(logs, f)).read() for f in sorted(os.listdir(logs))
             if f.startswith("two")][-2:]
  for out in resumed:   # the rerun skipped the finished phases on both processes
    for phase in ("gen", "label", "pm"):
      assert f"{phase}: complete, skipped" in out, out[-3000:]
  for phase in PHASES:
    assert os.path.isfile(os.path.join(two, phase, "DONE"))


def _assert_same_shards(ref: str, other: str, phase: str) -> None:
  """The phase's shards in ``other`` equal ``ref``'s (floats to 1e-5, the rest exactly)."""
  names = sorted(f for f in os.listdir(os.path.join(ref, phase, "shards"))
                 if f.startswith("shard_"))
  assert names == sorted(f for f in os.listdir(os.path.join(other, phase, "shards"))
                         if f.startswith("shard_")) and len(names) == 3
  for name in names:
    a = _rows(os.path.join(ref, phase, "shards", name))
    b = _rows(os.path.join(other, phase, "shards", name))
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
      assert ra.keys() == rb.keys()
      for k in ra:
        if isinstance(ra[k], float) or (isinstance(ra[k], list) and ra[k]
                                        and isinstance(ra[k][0], float)):
          np.testing.assert_allclose(ra[k], rb[k], atol=1e-5, err_msg=k)
        else:
          assert ra[k] == rb[k], (phase, name, k)


def test_generation_and_labels_equal_one_process(runs):
  one, two, _, _ = runs
  for phase in ("gen", "label"):
    _assert_same_shards(one, two, phase)
  # one record set each, written once
  for phase, name in (("gen", "sl_data"), ("label", "pref_data")):
    files = [f for f in os.listdir(os.path.join(two, phase, "records", name, "1.0.0"))
             if ".array_record-" in f]
    assert files == [f"{name}-train.array_record-00000-of-00001"], files


def test_trained_parameters_and_metrics_equal_one_process(runs):
  one, two, _, _ = runs
  for phase in MODELS:
    _, a = SavedModel.open(os.path.join(one, phase, "model")).load()
    _, b = SavedModel.open(os.path.join(two, phase, "model")).load()
    diffs = jax.tree.leaves(jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float32) -
                                         np.asarray(y, np.float32)))), a, b))
    print(f"{phase}: max |one process - two processes| = {max(diffs):.2e}")
    assert max(diffs) < 1e-4, phase
    rows_one = read_jsonl(os.path.join(one, phase, "metrics.jsonl"))
    rows_two = read_jsonl(os.path.join(two, phase, "metrics.jsonl"))
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one], phase
    assert len(rows_one) >= 2


def test_evaluation_answers_equal_one_process(runs):
  """pairwise_eval's answers (each process answered every other batch) and the PM judge's
  verdicts equal the one-process run's; one results file."""
  one, two, _, _ = runs
  names = sorted(os.listdir(os.path.join(one, "eval", "answers")))
  assert names == sorted(os.listdir(os.path.join(two, "eval", "answers"))) and len(names) == 6
  for name in names:
    a = _rows(os.path.join(one, "eval", "answers", name))
    b = _rows(os.path.join(two, "eval", "answers", name))
    assert len(a) == 6 and a == b, name
  for kind in ("red_team", "helpful"):
    a = _rows(os.path.join(one, "eval", "judgments", f"{kind}.jsonl"))
    b = _rows(os.path.join(two, "eval", "judgments", f"{kind}.jsonl"))
    assert len(a) == len(b) == 18
    np.testing.assert_allclose([r["p_a"] for r in a], [r["p_a"] for r in b], atol=1e-5)
  assert not [f for f in os.listdir(os.path.join(two, "eval")) if f.endswith(".tmp")]
  assert os.path.isfile(os.path.join(two, "eval", "results.json"))


def test_four_processes_generate_label_and_train_as_one(runs, tmp_path):
  """Four processes (one device each) run generation, labeling and the preference model:
  the shards equal the one-process run's (process 3 gets no generation shard: 3 shards,
  4 processes), one record set each, the PM's parameters equal to float round-off (a
  4-way instead of a 2-way data-parallel sum), its metrics rows written once."""
  one, _, logs, _ = runs
  four = str(tmp_path / "four")
  gin_file = os.path.join(os.path.dirname(one), "mp.gin")
  codes = _wait(_launch(four, gin_file, processes=4, devices=1, logs=logs,
                        flags=["--gin_param=pipeline.only=('gen', 'label', 'pm')"]), 600)
  assert codes == [0, 0, 0, 0], _tail(logs, "four")
  for phase in ("gen", "label"):
    _assert_same_shards(one, four, phase)
  for phase, name in (("gen", "sl_data"), ("label", "pref_data")):
    files = [f for f in os.listdir(os.path.join(four, phase, "records", name, "1.0.0"))
             if ".array_record-" in f]
    assert files == [f"{name}-train.array_record-00000-of-00001"], files
  _, a = SavedModel.open(os.path.join(one, "pm", "model")).load()
  _, b = SavedModel.open(os.path.join(four, "pm", "model")).load()
  diff = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(
      np.asarray(x, np.float32) - np.asarray(y, np.float32)))), a, b)))
  print(f"pm: max |one process - four processes| = {diff:.2e}")
  assert diff < 1e-4
  assert [r["step"] for r in read_jsonl(os.path.join(four, "pm", "metrics.jsonl"))] == [
      r["step"] for r in read_jsonl(os.path.join(one, "pm", "metrics.jsonl"))]
  assert sorted(f for f in os.listdir(four) if not f.endswith(".gin")) == [
      "gen", "label", "pm"]   # no other phase, no lock left
