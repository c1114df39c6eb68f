"""Every .gin file in the repo parses and binds against the registered configurables."""
import glob
import os

import gin
import pytest

from cai_jax import gin_setup
from cai_jax.models import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN_FILES = sorted(glob.glob(os.path.join(ROOT, "gin_configs", "**", "*.gin"), recursive=True))


def test_there_are_gin_files():
  kinds = {os.path.basename(os.path.dirname(f)) for f in GIN_FILES}
  assert {"models", "runs", "mesh"} <= kinds


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_parses_and_binds(path):
  gin.clear_config()
  try:
    gin_setup.parse([path], finalize=True)
    rel = os.path.relpath(path, os.path.join(ROOT, "gin_configs"))
    if rel.startswith("models/"):
      cfg = gin.get_configurable("ModelConfig")()
      assert isinstance(cfg, ModelConfig) and cfg.num_params() > 0
    if rel.startswith(("runs/", "experiments/")):
      program = gin.query_parameter("run.program")
      assert program.configurable.name, rel
  finally:
    gin.clear_config()


def test_typo_in_binding_is_an_error():
  gin.clear_config()
  try:
    with pytest.raises(ValueError, match="no_such_param"):
      gin_setup.parse([], ["sft.no_such_param = 3"])
  finally:
    gin.clear_config()


def test_mesh_file_overrides_macro():
  gin.clear_config()
  try:
    gin_setup.parse(["runs/sft.gin", "mesh/fsdp_tp.gin"])
    assert gin.query_parameter("MESH_SHAPE/macro.value") == (1, 4, 2)
  finally:
    gin.clear_config()
