"""``sweep``: a grid of gin files / bindings and seeds, each run its own ``cai_jax.main``
process (a small fake program registered by the experiment file), the table of mean +- sd
over seeds computed by hand, the trend figure, resuming without rerunning complete runs, a
failing run that does not stop the others, ``launch=False``, and argument errors."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from cai_jax import models
from cai_jax.models.api import count_params
from cai_jax.models.store import save_model
from cai_jax.sweep import read_metric, sweep

FAKE = '''
import json, os
import gin
from cai_jax.run import program

@gin.configurable
@program("fake_run")
def fake_run(workdir, *, x=1.0, seed=0):
  if x < 0:
    raise ValueError("fake_run: negative x")
  with open(os.path.join(os.path.dirname(workdir), "calls.txt"), "a") as f:
    f.write(os.path.basename(workdir) + "\\n")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"value": 2 * x + seed, "nested": {"list": [x, seed]}}, f)
'''


@pytest.fixture()
def experiment(tmp_path, monkeypatch):
  (tmp_path / "mods").mkdir()
  (tmp_path / "mods" / "sweep_fake.py").write_text(FAKE)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(tmp_path / "mods"), os.environ.get("PYTHONPATH", "")]))
  exp = tmp_path / "fake.gin"
  exp.write_text("import sweep_fake\nSEED = 0\nrun.program = @fake_run\n"
                 "fake_run.seed = %SEED\n")
  (tmp_path / "x3.gin").write_text("fake_run.x = 3.0\n")
  return exp


METRICS = {"x": "results.json:nested.list.0", "value": "results.json:value",
           "missing": "results.json:nested.nothing"}


def test_grid_table_trends_and_resume(experiment, tmp_path):
  wd = tmp_path / "sweep"
  axes = {"x": {"one": ["fake_run.x=1.0"], "three": [str(tmp_path / "x3.gin")]}}
  out = sweep(str(wd), experiment=str(experiment), axes=axes, seeds=(0, 5),
              metrics=METRICS, x_metric="x", logx=False)
  res = json.loads(open(out).read())
  assert [r["name"] for r in res["runs"]] == ["x-one_seed0", "x-one_seed5", "x-three_seed0",
                                              "x-three_seed5"]
  for r in res["runs"]:
    x = 1.0 if r["setting"]["x"] == "one" else 3.0
    assert r["complete"]
    assert r["metrics"] == {"x": x, "value": 2 * x + r["seed"], "missing": None}
  # mean +- sample sd over the two seeds, by hand: values 2x + 0 and 2x + 5
  md = (wd / "results.md").read_text()
  sd = float(np.std([0.0, 5.0], ddof=1))
  assert f"| one | 0,5 | 1.000 ± 0.000 (n=2) | {4.5:.3f} ± {sd:.3f} (n=2) | - |" in md
  assert f"| three | 0,5 | 3.000 ± 0.000 (n=2) | {8.5:.3f} ± {sd:.3f} (n=2) | - |" in md
  assert (wd / "trends.png").read_bytes()[:4] == b"\x89PNG"
  assert (wd / "trends.svg").exists()
  # every run is a standalone command
  lines = (wd / "commands.sh").read_text().splitlines()[1:]
  assert len(lines) == 4 and all("--workdir=" + str(wd) in ln for ln in lines)
  cmd = shlex.split(lines[2])
  assert f"--gin_file={tmp_path / 'x3.gin'}" in cmd and "--gin_param=SEED=0" in cmd
  # a rerun resumes: complete runs are only read
  calls = (wd / "calls.txt").read_text().split()
  assert sorted(calls) == sorted(r["name"] for r in res["runs"])
  again = json.loads(open(sweep(str(wd), experiment=str(experiment), axes=axes, seeds=(0, 5),
                                metrics=METRICS, x_metric="x", logx=False)).read())
  assert (wd / "calls.txt").read_text().split() == calls
  assert again["runs"] == res["runs"]


def test_a_failing_run_does_not_stop_the_others(experiment, tmp_path):
  wd = tmp_path / "sweep"
  axes = {"x": {"bad": ["fake_run.x=-1.0"], "good": ["fake_run.x=2.0"]}}
  with pytest.raises(RuntimeError, match="1 of 2 runs failed: x-bad_seed0"):
    sweep(str(wd), experiment=str(experiment), axes=axes, metrics=METRICS)
  res = json.loads((wd / "results.json").read_text())
  assert res["failed"] == ["x-bad_seed0"]
  by_name = {r["name"]: r for r in res["runs"]}
  assert not by_name["x-bad_seed0"]["complete"]
  assert by_name["x-good_seed0"]["metrics"]["value"] == 4.0


def test_launch_false_writes_commands_and_collects(experiment, tmp_path):
  wd = tmp_path / "sweep"
  axes = {"x": {"two": ["fake_run.x=2.0"]}}
  sweep(str(wd), experiment=str(experiment), axes=axes, seeds=(1,), metrics=METRICS,
        launch=False)
  assert not (wd / "x-two_seed1").exists()
  cmd = shlex.split((wd / "commands.sh").read_text().splitlines()[1])
  subprocess.run([sys.executable] + cmd[1:], check=True)   # as a cluster job would
  res = json.loads(open(sweep(str(wd), experiment=str(experiment), axes=axes, seeds=(1,),
                              metrics=METRICS, launch=False)).read())
  assert res["runs"][0]["complete"] and res["runs"][0]["metrics"]["value"] == 5.0


@pytest.mark.parametrize("change, match", [
    (dict(x_metric="nope"), "x_metric 'nope' is not one of the metrics"),
    (dict(seeds=()), "seeds is empty"),
    (dict(axes={"x": {}}), r"axes\['x'\] has no values"),
    (dict(x_axis="y"), "x_axis 'y' is not one of the axes"),
])
def test_bad_arguments(tmp_path, change, match):
  kw = {**dict(experiment="e.gin", axes={"x": {"a": ["f.x=1"]}}, metrics=METRICS), **change}
  with pytest.raises(ValueError, match=match):
    sweep(str(tmp_path / "s"), **kw)
  assert not (tmp_path / "s" / "commands.sh").exists()


def test_parameter_count_metric(tmp_path):
  cfg = models.ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                           d_ff=32, max_seq_len=32)
  _, params = models.init(cfg, seed=0)
  save_model(str(tmp_path / "run" / "base" / "model"), params, cfg)
  assert read_metric(str(tmp_path / "run"), "params:base/model") == count_params(params)
  assert read_metric(str(tmp_path / "run"), "params:nothing/here") is None
