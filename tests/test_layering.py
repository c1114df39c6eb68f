"""The package's shape: the toy world stays at the edge, programs do not import each
other, library layers never import programs, and modules and functions stay small."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "cai_jax")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 100


def _modules():
  for folder, _, files in os.walk(PKG):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _imports(path):
  """Every module name an import statement in ``path`` names (absolute imports)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      yield node.module
      yield from (f"{node.module}.{a.name}" for a in node.names)


MODULES = dict(_modules())


def test_the_scan_sees_the_package():
  assert "cai_jax.programs.rl_cai.ppo" in MODULES and "cai_jax.toyworld.phases" in MODULES
  assert "cai_jax.toyworld.phases" in set(_imports(MODULES["cai_jax.toyworld.configurables"]))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layering(name):
  imported = set(_imports(MODULES[name]))
  if not name.startswith("cai_jax.toyworld"):
    bad = sorted(m for m in imported if m == "cai_jax.toyworld"
                 or m.startswith("cai_jax.toyworld."))
    assert not bad, f"{name} imports the toy world: {bad}"
  if name.startswith("cai_jax.programs."):
    # cai_jax.programs.<method>.<program>: none may import another
    bad = sorted(m for m in imported if m.startswith("cai_jax.programs.")
                 and m.count(".") >= 3 and m != name)
    assert not bad, f"program {name} imports another program module: {bad}"
  elif name != "cai_jax.gin_setup":
    bad = sorted(m for m in imported if m == "cai_jax.programs"
                 or m.startswith("cai_jax.programs."))
    assert not bad, f"library module {name} imports programs: {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
  path = MODULES[name]
  with open(path, encoding="utf-8") as f:
    text = f.read()
  assert text.count("\n") <= MAX_MODULE_LINES, f"{path} has {text.count(chr(10))} lines"
  for node in ast.walk(ast.parse(text)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      start = min([node.lineno] + [d.lineno for d in node.decorator_list])
      n = node.end_lineno - start + 1
      assert n <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name} has {n} lines"


def test_generic_code_never_loads_the_toy_world():
  """The binary, every program and every generic run file load without the toy world."""
  code = ("import glob, sys\n"
          "import cai_jax.main\n"
          "from cai_jax import gin_setup\n"
          "gin_setup.register()\n"
          "for f in sorted(glob.glob('gin_configs/runs/*.gin')):\n"
          "  import gin; gin.clear_config(); gin_setup.parse([f])\n"
          "toy = sorted(m for m in sys.modules if m.startswith('cai_jax.toyworld'))\n"
          "assert not toy, toy\n"
          "print('ok')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=240, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
