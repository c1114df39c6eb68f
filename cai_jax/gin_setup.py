"""Gin at the edges: registers the configurable factories and parses config files.

Library functions take plain arguments. Gin binds program entry points (each
decorated in its own module under ``cai_jax.programs``) and the few factories
registered here. The toy world is not registered here: its experiment files import it
(``import cai_jax.toyworld.configurables`` at their top), so generic code never does.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import gin

from cai_jax import paths
from cai_jax.models.config import ModelConfig
from cai_jax.run import runner
from cai_jax.train import optim

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "gin_configs")

@gin.configurable
def run(workdir: str, program: Callable = gin.REQUIRED, restart: bool = False):
  """Runs the program that the gin files bind to ``run.program`` in ``workdir``.

  With ``restart`` a workdir holding a run of another configuration is cleared and the
  program starts over (default: such a run is refused, naming what differs).
  """
  with runner.policy("restart" if restart else None):
    return program(workdir=workdir)


_registered = False
_search_path_added = False


def register() -> None:
  """Registers external configurables and imports every program (idempotent)."""
  global _registered
  if _registered:
    return
  gin.external_configurable(ModelConfig, "ModelConfig")
  gin.external_configurable(optim.make_optimizer, "make_optimizer")
  # Importing a program module registers its gin configurable.
  # pylint: disable=import-outside-toplevel,unused-import
  import cai_jax.pipeline  # noqa: F401
  import cai_jax.programs.classifiers.chains  # noqa: F401
  import cai_jax.programs.classifiers.data  # noqa: F401
  import cai_jax.programs.classifiers.guard_eval  # noqa: F401
  import cai_jax.programs.classifiers.train  # noqa: F401
  import cai_jax.programs.evaluate.judge_eval  # noqa: F401
  import cai_jax.programs.evaluate.pairwise  # noqa: F401
  import cai_jax.programs.rl_cai.dpo  # noqa: F401
  import cai_jax.programs.rl_cai.label  # noqa: F401
  import cai_jax.programs.rl_cai.ppo  # noqa: F401
  import cai_jax.programs.rl_cai.preference_model  # noqa: F401
  import cai_jax.programs.sl_cai.conversations  # noqa: F401
  import cai_jax.programs.sl_cai.fit  # noqa: F401
  import cai_jax.programs.sl_cai.generate  # noqa: F401
  import cai_jax.programs.sl_cai.sft  # noqa: F401
  import cai_jax.sweep  # noqa: F401
  _registered = True


def parse(gin_files: Sequence[str] = (), gin_params: Sequence[str] = (), *,
          finalize: bool = True) -> None:
  """Parses gin files (looked up in the cwd, then in ``gin_configs/``) and bindings."""
  global _search_path_added
  register()
  if not _search_path_added and os.path.isdir(GIN_DIR):
    gin.add_config_file_search_path(GIN_DIR)
    _search_path_added = True
  files = [os.path.abspath(_resolve(f)) for f in gin_files]
  # Parse from inside gin_configs/ so `include 'runs/x.gin'` resolves at the first try
  # (gin logs an error line for every search-path miss).
  cwd = os.getcwd()
  os.chdir(GIN_DIR if os.path.isdir(GIN_DIR) else cwd)
  try:
    gin.parse_config_files_and_bindings(files, list(gin_params), finalize_config=finalize)
  finally:
    os.chdir(cwd)


def _resolve(path: str) -> str:
  """A gin file relative to the cwd, else relative to ``gin_configs/``."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  candidate = os.path.join(GIN_DIR, path)
  if os.path.exists(candidate):
    return candidate
  raise FileNotFoundError(f"gin file {path!r} not found in the cwd or in {GIN_DIR}")


def write_config(workdir: str, name: str, text: str) -> str:
  paths.makedirs(workdir)
  path = paths.join(workdir, name)
  with paths.open(path, "w") as f:
    f.write(text)
  return path
