"""The pipeline runs phases in order, in the experiment root, and skips finished ones."""
import os

import pytest

from cai_jax.pipeline import pipeline

CALLS = []


def _phase(name, fail=False):
  def program(workdir):
    CALLS.append((name, os.path.basename(workdir), os.getcwd()))
    if fail:
      raise RuntimeError(f"{name} failed")
    with open(os.path.join(workdir, "out.txt"), "w") as f:
      f.write(name)
    if name == "b":  # reads the previous phase's output by a root-relative path
      assert open("a/out.txt").read() == "a"
  return program


def test_runs_in_order_and_resumes(tmp_path):
  CALLS.clear()
  root = str(tmp_path / "exp")
  with pytest.raises(RuntimeError, match="c failed"):
    pipeline(root, phases={"a": _phase("a"), "b": _phase("b"), "c": _phase("c", fail=True)})
  assert [c[0] for c in CALLS] == ["a", "b", "c"]
  assert all(c[2] == root for c in CALLS)
  assert os.path.exists(os.path.join(root, "a", "DONE"))
  assert not os.path.exists(os.path.join(root, "c", "DONE"))
  CALLS.clear()
  timings = pipeline(root, phases={"a": _phase("a"), "b": _phase("b"), "c": _phase("c")})
  assert [c[0] for c in CALLS] == ["c"] and list(timings) == ["c"]
  assert os.getcwd() != root


def test_only_and_bad_names(tmp_path):
  CALLS.clear()
  pipeline(str(tmp_path), phases={"a": _phase("a"), "b": _phase("b")}, only=("a",))
  assert [c[0] for c in CALLS] == ["a"]
  with pytest.raises(ValueError, match="unknown phases"):
    pipeline(str(tmp_path), phases={"a": _phase("a")}, only=("zzz",))
  with pytest.raises(ValueError, match="bad phase name"):
    pipeline(str(tmp_path), phases={"x/y": _phase("a")})
