"""The one binary: ``python -m cai_jax.main --gin_file=... --gin_param=... --workdir=...``.

It parses flags, optionally joins a multi-host JAX job, enables the persistent
compilation cache, parses gin, writes the configs to the workdir, and runs the
program that the gin files bind to ``run.program``.
"""
from __future__ import annotations

import logging
import os
import gin
import jax
from absl import app, flags
from absl import logging as absl_logging

from cai_jax import gin_setup

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files (relative to the cwd or gin_configs/).")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'sft.num_steps=10'.")
flags.DEFINE_string("workdir", None, "Output folder of the run.", required=True)
flags.DEFINE_bool("restart", False, "If the workdir holds a run of another configuration, "
                  "delete its outputs and start over (default: refuse, naming what differs).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, multi-node).")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/cai_jax/xla"),
                    "Persistent XLA compilation cache folder ('' disables it).")


def enable_compilation_cache(path: str) -> None:
  if not path:
    return
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  logging.getLogger("cai_jax").setLevel(logging.INFO)
  if FLAGS.multihost:
    jax.distributed.initialize()
  enable_compilation_cache(FLAGS.compilation_cache)
  jax.config.update("jax_threefry_partitionable", True)
  gin_setup.parse(FLAGS.gin_file, FLAGS.gin_param)
  workdir = os.path.abspath(FLAGS.workdir)
  if jax.process_index() == 0:
    gin_setup.write_config(workdir, "config.gin", gin.config_str())
  gin_setup.run(workdir=workdir, **({"restart": True} if FLAGS.restart else {}))
  if jax.process_index() == 0:
    gin_setup.write_config(workdir, "operative_config.gin", gin.operative_config_str())


if __name__ == "__main__":
  app.run(main)
