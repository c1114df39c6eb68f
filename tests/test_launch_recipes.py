"""The launch recipes: tpu_launch/ and gpu_launch/ run against fake gcloud, sbatch, srun,
ssh and scp programs (first on the PATH, each appending its argv as one JSON list a line
to a log), and the commands they would issue are compared; setup.py's accelerator
extras and docker/Dockerfile are checked statically. Hermetic: no network, no cloud."""
import ast
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "tpu_launch")
GPU = os.path.join(ROOT, "gpu_launch")
FAKES = ("gcloud", "sbatch", "srun", "ssh", "scp")
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
TPU_ENV = {"TPU_NAME": "cai-test", "TPU_ZONE": "us-west4-a", "TPU_TYPE": "v5litepod-16",
           "TPU_VERSION": "v2-alpha-tpuv5-lite"}
# passed through to cai_jax.main: a space, single and double quotes, shell characters
ARGS = ["--gin_file=runs/sft.gin", "--gin_param=sft.train_data='gs://b/my convs.jsonl'",
        '--gin_param=sft.note="it\'s $HOME & `x`"', "--workdir=gs://b/runs/sft 1"]

FAKE = """#!{python}
import json, os, shutil, subprocess, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps([name] + sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_FAIL") in sys.argv[1:]:
  sys.exit(3)
if name == "gcloud" and "scp" in sys.argv and os.environ.get("FAKE_KEEP"):
  shutil.copy(sys.argv[sys.argv.index("scp") + 1], os.environ["FAKE_KEEP"])
if name == "sbatch":  # run the batch script here, as the first node of the job would
  i = next(i for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("-"))
  sys.exit(subprocess.call(["bash"] + sys.argv[i:]))
"""


class Fakes:
  """A folder of fake programs and the log they write; run() runs a script under them."""

  def __init__(self, tmp_path):
    self.tmp = tmp_path
    self.bin = tmp_path / "fakebin"
    self.bin.mkdir()
    self.log = tmp_path / "calls.jsonl"
    self.log.touch()
    for name in FAKES:
      path = self.bin / name
      path.write_text(FAKE.format(python=sys.executable))
      path.chmod(0o755)
    (tmp_path / "home").mkdir()

  def run(self, script, *args, env=None):
    """bash SCRIPT ARGS..., or the fake program SCRIPT (a name in FAKES) with ARGS."""
    full_env = {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "LC_ALL": "C",
                "HOME": str(self.tmp / "home"), "TMPDIR": str(self.tmp),
                "FAKE_LOG": str(self.log), **(env or {})}
    argv = [str(self.bin / script)] if script in FAKES else ["bash", script]
    return subprocess.run(argv + list(args), env=full_env, capture_output=True,
                          text=True, timeout=60, cwd=self.tmp)

  def calls(self):
    return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fakes(tmp_path):
  return Fakes(tmp_path)


def _ok(proc):
  assert proc.returncode == 0, proc.stderr
  return proc


# --- tpu_launch -----------------------------------------------------------------------

def test_create_issues_one_gcloud_create(fakes):
  _ok(fakes.run(f"{TPU}/create.sh", env={**TPU_ENV, "TPU_PROJECT": "my-proj"}))
  assert fakes.calls() == [GCLOUD_TPU + [
      "create", "cai-test", "--zone", "us-west4-a", "--project", "my-proj",
      "--accelerator-type", "v5litepod-16", "--version", "v2-alpha-tpuv5-lite"]]


def test_delete_and_logs(fakes):
  _ok(fakes.run(f"{TPU}/delete.sh", env=TPU_ENV))
  _ok(fakes.run(f"{TPU}/logs.sh", env={**TPU_ENV, "WORKER": "3"}))
  assert fakes.calls() == [
      GCLOUD_TPU + ["delete", "cai-test", "--zone", "us-west4-a", "--quiet"],
      GCLOUD_TPU + ["ssh", "cai-test", "--zone", "us-west4-a", "--worker=3",
                    "--command", "tail -n 200 -f ~/cai_jax.log"]]


@pytest.mark.parametrize("script,missing", [
    ("create.sh", "TPU_NAME"), ("create.sh", "TPU_ZONE"), ("create.sh", "TPU_TYPE"),
    ("create.sh", "TPU_VERSION"), ("delete.sh", "TPU_NAME"), ("logs.sh", "TPU_ZONE"),
    ("run.sh", "TPU_NAME"), ("setup.sh", "TPU_ZONE")])
def test_a_missing_setting_fails_before_any_command(fakes, script, missing):
  env = {k: v for k, v in TPU_ENV.items() if k != missing}
  proc = fakes.run(f"{TPU}/{script}", *ARGS, env=env)
  assert proc.returncode == 2 and missing in proc.stderr
  assert fakes.calls() == []


def test_run_starts_the_binary_on_all_workers_with_the_arguments_unchanged(fakes):
  _ok(fakes.run(f"{TPU}/run.sh", *ARGS, env=TPU_ENV))
  [call] = fakes.calls()
  assert call[:-1] == GCLOUD_TPU + ["ssh", "cai-test", "--zone", "us-west4-a",
                                    "--worker=all", "--command"]
  command = call[-1]
  assert "~/cai_venv/bin/python -m cai_jax.main --multihost '--gin_file=" in command
  assert command.startswith("cd ~/cai_jax && nohup ") and "> ~/cai_jax.log" in command
  # what the worker's shell would start: run the command string here, under a POSIX sh
  # and bash, with a fake python in a fake home
  for shell in ("sh", "bash"):
    home = fakes.tmp / f"worker_{shell}"
    (home / "cai_jax").mkdir(parents=True)
    (home / "cai_venv" / "bin").mkdir(parents=True)
    python = home / "cai_venv" / "bin" / "python"
    python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      "open(os.path.expanduser('~/argv.json'), 'w').write("
                      "json.dumps([os.getcwd()] + sys.argv[1:]))\n")
    python.chmod(0o755)
    subprocess.run([shell, "-c", command], env={"HOME": str(home), "PATH": os.environ["PATH"]},
                   check=True, timeout=30)
    for _ in range(200):  # started in the background (nohup ... &)
      if (home / "argv.json").exists() and (home / "argv.json").stat().st_size:
        break
      time.sleep(0.05)
    got = json.loads((home / "argv.json").read_text())
    assert got == [str(home / "cai_jax"), "-m", "cai_jax.main", "--multihost", *ARGS]
    assert (home / "cai_jax.log").exists()


def test_run_needs_a_workdir_and_warns_off_gcs(fakes):
  proc = fakes.run(f"{TPU}/run.sh", "--gin_file=runs/sft.gin", env=TPU_ENV)
  assert proc.returncode == 2 and "--workdir" in proc.stderr and fakes.calls() == []
  proc = _ok(fakes.run(f"{TPU}/run.sh", "--workdir", "/tmp/local", env=TPU_ENV))
  assert "not on gs://" in proc.stderr
  assert fakes.calls()[0][-1].endswith("--multihost '--workdir' '/tmp/local' "
                                       "> ~/cai_jax.log 2>&1 < /dev/null &")


def _toy_checkout(root, with_git):
  """A small checkout: the tpu_launch scripts, code, gin files and what must stay home."""
  files = {"setup.py": "", "cai_jax/main.py": "", "gin_configs/runs/sft.gin": "",
           "runs/toy/big.bin": "x", ".venv/bin/python": "", "cai_jax/__pycache__/m.pyc": "",
           ".gitignore": "/runs/\n.venv/\n__pycache__/\n", "notes.txt": ""}
  for rel, text in files.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
  (root / "tpu_launch").mkdir()
  for name in os.listdir(TPU):
    (root / "tpu_launch" / name).write_text(open(os.path.join(TPU, name)).read())
  if with_git:
    git = ["git", "-C", str(root)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "setup.py", "cai_jax", "gin_configs", "tpu_launch"],
                   check=True)


@pytest.mark.parametrize("with_git", [True, False], ids=["git", "no_git"])
def test_setup_copies_the_checkout_and_installs_the_tpu_extra(fakes, with_git):
  checkout = fakes.tmp / "checkout"
  _toy_checkout(checkout, with_git)
  kept = fakes.tmp / "sent.tgz"
  _ok(fakes.run(f"{checkout}/tpu_launch/setup.sh",
                env={**TPU_ENV, "TPU_PYTHON": "python3.11", "FAKE_KEEP": str(kept)}))
  scp, ssh = fakes.calls()
  archive = scp[5]
  assert scp == GCLOUD_TPU + ["scp", archive, "cai-test:cai_jax_src.tgz", "--zone",
                              "us-west4-a", "--worker=all"]
  assert not os.path.exists(archive)  # the local temporary archive is removed
  with tarfile.open(kept) as tar:
    names = {os.path.normpath(n) for n in tar.getnames()}
  for rel in ("setup.py", "cai_jax/main.py", "gin_configs/runs/sft.gin", "tpu_launch/run.sh",
              "notes.txt"):
    assert rel in names, rel
  assert not any(n.split("/")[0] in ("runs", ".venv", ".git") or "__pycache__" in n
                 for n in names), sorted(names)
  assert ssh[:-1] == GCLOUD_TPU + ["ssh", "cai-test", "--zone", "us-west4-a", "--worker=all",
                                   "--command"]
  command = ssh[-1]
  assert command.startswith("'python3.11' -c 'import sys; sys.exit(sys.version_info < (3, 11))'")
  assert "tar xzf ~/cai_jax_src.tgz -C ~/cai_jax" in command
  assert "&& 'python3.11' -m venv ~/cai_venv" in command
  assert command.endswith("&& ~/cai_venv/bin/pip install -q -e ~/cai_jax'[tpu]'")


# --- gpu_launch -----------------------------------------------------------------------

def test_slurm_script_runs_one_multihost_task_per_node(fakes):
  submit = fakes.tmp / "submit"
  submit.mkdir()
  _ok(fakes.run(f"{GPU}/slurm.sbatch", *ARGS, env={"SLURM_SUBMIT_DIR": str(submit)}))
  assert fakes.calls() == [["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "python",
                            "-m", "cai_jax.main", "--multihost", *ARGS]]
  header = re.findall(r"^#SBATCH (\S+)", open(f"{GPU}/slurm.sbatch").read(), re.M)
  assert "--ntasks-per-node=1" in header and any(h.startswith("--nodes=") for h in header)


def test_slurm_script_through_sbatch(fakes):
  script = f"{GPU}/slurm.sbatch"
  _ok(fakes.run("sbatch", "--nodes=4", script, *ARGS,
                env={"CAI_PYTHON": "/opt/venv/bin/python"}))
  assert fakes.calls() == [
      ["sbatch", "--nodes=4", script, *ARGS],
      ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "/opt/venv/bin/python", "-m",
       "cai_jax.main", "--multihost", *ARGS]]


def test_slurm_script_needs_a_workdir(fakes):
  proc = fakes.run(f"{GPU}/slurm.sbatch", "--gin_file=runs/sft.gin")
  assert proc.returncode == 2 and "--workdir" in proc.stderr and fakes.calls() == []


SSH_ENV = {"HOSTS": "alice@gpu-a gpu-b,gpu-c", "COORDINATOR_PORT": "2222",
           "REMOTE_DIR": "/srv/cai jax", "REMOTE_ENV": "NCCL_DEBUG=INFO"}


def _ssh_calls(fakes):
  calls = fakes.calls()
  assert all(c[:3] == ["ssh", "-o", "BatchMode=yes"] and len(c) == 5 for c in calls), calls
  by_id = {}
  for c in calls:
    words = shlex.split(c[4])
    pid = next(w for w in words if w.startswith("--process_id="))
    by_id[int(pid.split("=")[1])] = (c[3], words)
  return by_id


def test_ssh_loop_starts_process_i_on_host_i(fakes):
  logs = fakes.tmp / "logs"
  proc = _ok(fakes.run(f"{GPU}/ssh_run.sh", *ARGS, env={**SSH_ENV, "LOG_DIR": str(logs)}))
  by_id = _ssh_calls(fakes)
  hosts = ["alice@gpu-a", "gpu-b", "gpu-c"]
  assert sorted(by_id) == [0, 1, 2]
  for i, host in enumerate(hosts):
    assert by_id[i] == (host, [
        "cd", "/srv/cai jax", "&&", "exec", "env", "NCCL_DEBUG=INFO", ".venv/bin/python", "-m",
        "cai_jax.main", "--coordinator_address=gpu-a:2222", "--num_processes=3",
        f"--process_id={i}", *ARGS])
    assert (logs / f"{i}-{host.replace('@', '_')}.log").exists()
    assert f"process {i} on {host} finished" in proc.stdout


def test_ssh_loop_fails_when_one_process_fails(fakes):
  proc = fakes.run(f"{GPU}/ssh_run.sh", *ARGS,
                   env={**SSH_ENV, "FAKE_FAIL": "gpu-b", "LOG_DIR": str(fakes.tmp / "l")})
  assert proc.returncode == 1
  assert "process 1 on gpu-b failed (exit 3)" in proc.stderr
  assert sorted(_ssh_calls(fakes)) == [0, 1, 2]  # every process was started


@pytest.mark.parametrize("env,args,word", [
    ({}, ARGS, "HOSTS"), ({"HOSTS": " , "}, ARGS, "HOSTS"),
    ({"HOSTS": "a b"}, ["--gin_file=runs/sft.gin"], "--workdir")])
def test_ssh_loop_checks_its_settings_before_any_ssh(fakes, env, args, word):
  proc = fakes.run(f"{GPU}/ssh_run.sh", *args, env={**env, "LOG_DIR": str(fakes.tmp / "l")})
  assert proc.returncode == 2 and word in proc.stderr and fakes.calls() == []


# --- the scripts, setup.py's extras, the container ------------------------------------

SCRIPTS = sorted([f"tpu_launch/{n}" for n in os.listdir(TPU) if n.endswith(".sh")]
                 + [f"gpu_launch/{n}" for n in os.listdir(GPU) if n.endswith((".sh", ".sbatch"))])


@pytest.mark.parametrize("rel", SCRIPTS)
def test_scripts_are_strict_bash(rel):
  text = open(os.path.join(ROOT, rel)).read()
  assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
  assert text.count("\n") <= 450
  subprocess.run(["bash", "-n", os.path.join(ROOT, rel)], check=True)


def _setup_kwargs():
  """setup()'s literal keyword arguments, read from setup.py without running it."""
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  [call] = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "attr", getattr(n.func, "id", None)) == "setup"]
  return {k.arg: ast.literal_eval(k.value) for k in call.keywords
          if k.arg in ("install_requires", "extras_require")}


def test_setup_declares_tpu_and_cuda_extras_with_the_same_jax():
  kw = _setup_kwargs()
  pins = dict(r.split("==") for r in kw["install_requires"] if r.startswith(("jax==", "jaxlib==")))
  version = pins["jax"]
  assert pins["jaxlib"] == version
  extras = kw["extras_require"]
  assert extras["tpu"][0] == f"jax[tpu]=={version}"
  assert set(extras["gcs"]) <= set(extras["tpu"])   # TPU runs write to gs://
  assert extras["cuda"] in ([f"jax[cuda12]=={version}"], [f"jax[cuda13]=={version}"])
  # the installed jax (the pinned one) declares the extras named
  dist = importlib.metadata.distribution("jax")
  if dist.version == version:
    provided = set(dist.metadata.get_all("Provides-Extra"))
    assert {"tpu", re.search(r"\[(\w+)\]", extras["cuda"][0]).group(1)} <= provided


def test_dockerfile_installs_an_existing_extra_and_runs_the_binary():
  text = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
  extras = _setup_kwargs()["extras_require"]
  [default] = re.findall(r"^ARG EXTRA=(\S+)$", text, re.M)
  assert default in extras
  assert 'pip install -e ".[${EXTRA}]"' in text
  named = re.findall(r"EXTRA=(\w+)", text + open(os.path.join(ROOT, "docker", "README.md")).read())
  assert set(named) <= set(extras) and {"cuda", "tpu"} <= set(named)
  [entry] = re.findall(r"^ENTRYPOINT (.+)$", text, re.M)
  assert json.loads(entry) == ["python", "-m", "cai_jax.main"]
  ignored = open(os.path.join(ROOT, "docker", "Dockerfile.dockerignore")).read().split()
  assert {".git", ".venv", "runs"} <= set(ignored)


@pytest.mark.parametrize("folder", ["tpu_launch", "gpu_launch", "docker"])
def test_readmes_name_scripts_that_exist_and_say_what_ran(folder):
  text = open(os.path.join(ROOT, folder, "README.md")).read()
  for rel in set(re.findall(r"\b((?:tpu|gpu)_launch/[\w.]+\.(?:sh|sbatch)|docker/\w+)", text)):
    assert os.path.exists(os.path.join(ROOT, rel)), rel
  assert "## Status" in text and "tests/test_launch_recipes.py" in text
