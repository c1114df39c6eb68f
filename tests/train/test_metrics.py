"""MetricsWriter: JSONL rows, TensorBoard scalars / text / hparams read back with
TensorBoard's own reader, resume truncation, process gating and the wandb backend."""
import sys
import types

import gin
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from cai_jax.train import metrics


def _events(logdir):
  acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
  acc.Reload()
  return acc


def _scalars(acc, tag):
  return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_scalars_round_trip(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), process_index=0) as w:
    w.write(10, {"loss": np.float32(2.5), "lr": 1e-3, "note": "x"})
    w.write(20, {"loss": 1.25, "bad": float("nan")})
  rows = metrics.read_jsonl(w.jsonl_path)
  assert rows[0] == {"step": 10, "loss": 2.5, "lr": 1e-3, "note": "x"}
  assert rows[1] == {"step": 20, "loss": 1.25, "bad": "nan"}
  acc = _events(tmp_path)
  assert sorted(acc.Tags()["scalars"]) == ["bad", "loss", "lr"]   # "note" is JSONL-only
  assert _scalars(acc, "loss") == [(10, 2.5), (20, 1.25)]
  assert _scalars(acc, "lr") == [(10, pytest.approx(1e-3))]
  assert [s for s, _ in _scalars(acc, "bad")] == [20]
  assert np.isnan(_scalars(acc, "bad")[0][1])
  assert w.logged(20, "bad") and not w.logged(10, "bad")


def test_text_summary(tmp_path):
  text = "**Prompt**\n\n    How do I bake bread?\n\nünïcode ✓"
  with metrics.MetricsWriter(str(tmp_path), process_index=0) as w:
    w.text(3, "rollout/sample", text)
    w.text(7, "rollout/sample", "second")
  acc = _events(tmp_path)
  assert acc.Tags()["tensors"] == ["rollout/sample/text_summary"]
  events = acc.Tensors("rollout/sample/text_summary")
  assert [e.step for e in events] == [3, 7]
  got = [tensor_util.make_ndarray(e.tensor_proto).tolist() for e in events]
  assert got == [[text.encode()], [b"second"]]
  assert "rollout/sample/text_summary" in acc.PluginTagToContent("text")
  assert metrics.read_jsonl(w.jsonl_path) == []   # text stays out of the metrics rows


def test_flatten_hparams():
  flat = metrics.flatten_hparams({
      "lr": 1e-3, "steps": np.int64(5), "ok": True, "select": None, "name": "sft",
      "model": {"d": 4, "attn": {"heads": 2}}, "markers": ("no", "sorry")})
  assert flat == {"lr": 1e-3, "steps": 5, "ok": True, "select": "None", "name": "sft",
                  "model/d": 4, "model/attn/heads": 2, "markers": "('no', 'sorry')"}
  assert type(flat["steps"]) is int


def test_hparams_are_written(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), process_index=0) as w:
    w.hparams({"optimizer": {"learning_rate": 3e-4, "name": "adamw"}, "batch_size": 8,
               "whiten": False, "select": None})
    w.write(1, {"loss": 0.5})
  acc = _events(tmp_path)
  content = acc.PluginTagToContent("hparams")
  # Only the session start info: TensorBoard infers the experiment (and its metrics,
  # this run's scalars) from all runs, so ablations line up side by side.
  assert list(content) == ["_hparams_/session_start_info"]
  data = plugin_data_pb2.HParamsPluginData.FromString(
      content["_hparams_/session_start_info"])
  hp = data.session_start_info.hparams
  assert set(hp) == {"optimizer/learning_rate", "optimizer/name", "batch_size", "whiten",
                     "select"}
  assert hp["optimizer/learning_rate"].number_value == pytest.approx(3e-4)
  assert hp["optimizer/name"].string_value == "adamw"
  assert hp["batch_size"].number_value == 8
  assert hp["whiten"].HasField("bool_value") and hp["whiten"].bool_value is False
  assert hp["select"].string_value == "None"
  assert _scalars(acc, "loss") == [(1, 0.5)]


def test_resume_truncates_rows_and_purges_events(tmp_path):
  # resume_step=0: a fresh start, as the programs pass it.
  with metrics.MetricsWriter(str(tmp_path), process_index=0, resume_step=0) as w:
    for step in (1, 2, 3, 4, 5):
      w.write(step, {"loss": float(step)})
      w.text(step, "sample", f"old {step}")
  # The run was restored at step 3: rows 4 and 5 go (a cut last line is dropped too).
  with open(w.jsonl_path, "a", encoding="utf-8") as f:
    f.write('{"step": 6, "lo')
  with metrics.MetricsWriter(str(tmp_path), process_index=0, resume_step=3) as w2:
    assert [r["step"] for r in w2.rows] == [1, 2, 3]
    assert w2.logged(3, "loss") and not w2.logged(4, "loss")
    w2.write(4, {"loss": 40.0})
    w2.text(4, "sample", "new 4")
  assert metrics.read_jsonl(w.jsonl_path) == [
      {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0},
      {"step": 4, "loss": 40.0}]
  # TensorBoard drops the first attempt's events after step 3 as well.
  assert _scalars(_events(tmp_path), "loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
  # So does the reader TensorBoard's server uses, for text too (the legacy reader above
  # purges only scalars, histograms and images).
  acc = pea.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  texts = [(e.step, tensor_util.make_ndarray(e.tensor_proto).tolist())
           for e in acc.Tensors("sample/text_summary")]
  assert texts == [(1, [b"old 1"]), (2, [b"old 2"]), (3, [b"old 3"]), (4, [b"new 4"])]


def test_resume_without_a_file_and_fresh_start(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), process_index=0, resume_step=0) as w:
    assert w.rows == []
    w.write(0, {"loss": 1.0})
  with metrics.MetricsWriter(str(tmp_path), process_index=0, resume_step=0) as w:
    assert w.rows == [{"step": 0, "loss": 1.0}]


def test_other_processes_write_nothing(tmp_path):
  logdir = tmp_path / "run"
  with metrics.MetricsWriter(str(logdir), process_index=1) as w:
    assert not w.active
    w.hparams({"lr": 1.0})
    w.write(1, {"loss": 1.0})
    w.text(1, "t", "hello")
    assert w.logged(1, "loss")   # rows are kept, so every host answers alike
  assert not logdir.exists()


def test_other_processes_read_but_never_rewrite_a_resumed_file(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), process_index=0) as w:
    for step in (1, 2, 3):
      w.write(step, {"eval/loss": float(step)})
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  with metrics.MetricsWriter(str(tmp_path), process_index=1, resume_step=2) as w1:
    assert [r["step"] for r in w1.rows] == [1, 2]
    assert w1.logged(2, "eval/") and not w1.logged(3, "eval/")
    w1.write(3, {"eval/loss": 9.0})
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_default_process_index_is_jax_process(tmp_path, monkeypatch):
  monkeypatch.setattr(metrics.jax, "process_index", lambda: 2)
  with metrics.MetricsWriter(str(tmp_path / "a")) as w:
    w.write(1, {"x": 1.0})
  assert not w.active and not (tmp_path / "a").exists()
  monkeypatch.setattr(metrics.jax, "process_index", lambda: 0)
  with metrics.MetricsWriter(str(tmp_path / "b"), tensorboard=False) as w:
    w.write(1, {"x": 1.0})
  assert w.active and sorted(p.name for p in (tmp_path / "b").iterdir()) == ["metrics.jsonl"]


def test_wandb_missing_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)   # makes `import wandb` fail
  for process in (0, 1):
    with pytest.raises(ImportError, match="pip install wandb"):
      metrics.MetricsWriter(str(tmp_path), process_index=process, wandb_project="cai")
  assert not (tmp_path / "metrics.jsonl").exists()


class _FakeRun:

  def __init__(self, calls, **kwargs):
    self.calls = calls
    calls.append(("init", kwargs))
    self.config = types.SimpleNamespace(
        update=lambda d, **kw: calls.append(("config", dict(d), kw)))

  def log(self, data, step=None):
    self.calls.append(("log", dict(data), step))

  def finish(self):
    self.calls.append(("finish",))


def _fake_wandb(monkeypatch):
  calls = []
  module = types.ModuleType("wandb")
  module.init = lambda **kwargs: _FakeRun(calls, **kwargs)
  monkeypatch.setitem(sys.modules, "wandb", module)
  return calls


def test_wandb_gets_scalars_text_and_hparams(tmp_path, monkeypatch):
  calls = _fake_wandb(monkeypatch)
  logdir = tmp_path / "sft_lr3e-4"
  with metrics.MetricsWriter(str(logdir), process_index=0, wandb_project="cai") as w:
    w.hparams({"optimizer": {"learning_rate": 3e-4}, "batch_size": 8})
    w.write(5, {"loss": np.float32(0.5), "note": "x"})
    w.text(5, "rollout/sample", "hi")
  assert calls == [
      ("init", {"project": "cai", "dir": str(logdir), "name": "sft_lr3e-4"}),
      ("config", {"optimizer/learning_rate": 3e-4, "batch_size": 8},
       {"allow_val_change": True}),
      ("log", {"loss": 0.5}, 5),
      ("log", {"rollout/sample": "hi"}, 5),
      ("finish",)]
  # The local files are written as well.
  assert metrics.read_jsonl(w.jsonl_path) == [{"step": 5, "loss": 0.5, "note": "x"}]
  assert _scalars(_events(logdir), "loss") == [(5, 0.5)]


def test_wandb_only_on_process_zero(tmp_path, monkeypatch):
  calls = _fake_wandb(monkeypatch)
  with metrics.MetricsWriter(str(tmp_path / "r"), process_index=1, wandb_project="cai") as w:
    w.hparams({"a": 1})
    w.write(1, {"loss": 1.0})
    w.text(1, "t", "x")
  assert calls == []


def test_wandb_project_from_gin(tmp_path, monkeypatch):
  calls = _fake_wandb(monkeypatch)
  gin.clear_config()
  try:
    gin.parse_config("logging_backends.wandb_project = 'ablations'")
    with metrics.MetricsWriter(str(tmp_path / "run"), process_index=0) as w:
      w.write(1, {"loss": 2.0})
  finally:
    gin.clear_config()
  assert calls[0] == ("init", {"project": "ablations", "dir": str(tmp_path / "run"),
                               "name": "run"})
  assert ("log", {"loss": 2.0}, 1) in calls


def test_log_samples_writes_text_only(tmp_path, tensorboard_texts):
  metrics.log_samples(str(tmp_path / "a"), "gen/chain", ["first", "**second**"],
                      process_index=0)
  assert tensorboard_texts(tmp_path / "a", "gen/chain") == [(0, "first"), (1, "**second**")]
  assert not (tmp_path / "a" / "metrics.jsonl").exists()
  metrics.log_samples(str(tmp_path / "b"), "gen/chain", ["x"], process_index=1)
  assert not (tmp_path / "b").exists()
