"""The one binary: ``python -m cai_jax.main --gin_file=... --gin_param=... --workdir=...``.

It parses flags, optionally joins a multi-host JAX job, enables the persistent
compilation cache, parses gin, writes the configs to the workdir, and runs the
program that the gin files bind to ``run.program``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
import gin
import jax
from absl import app, flags
from absl import logging as absl_logging

from cai_jax import gin_setup, paths
from cai_jax.sharding import processes

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files (relative to the cwd or gin_configs/).")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'sft.num_steps=10'.")
flags.DEFINE_string("workdir", None, "Output folder of the run.", required=True)
flags.DEFINE_bool("restart", False, "If the workdir holds a run of another configuration, "
                  "delete its outputs and start over (default: refuse, naming what differs).")
flags.DEFINE_bool("multihost", False, "Join a multi-process JAX job (jax.distributed): "
                  "the cluster is auto-detected (Cloud TPU, Slurm, GKE/Kubernetes, MPI) "
                  "unless the three flags below name it.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator "
                    "service (bare machines, Ray, any scheduler that only gives addresses); "
                    "implies --multihost.")
flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1 "
                     "(with --coordinator_address).")
flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds without a heartbeat after which "
                     "the job's other processes treat a process as dead and fail.")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/cai_jax/xla"),
                    "Persistent XLA compilation cache folder ('' disables it).")


def enable_compilation_cache(path: str) -> None:
  if not path:
    return
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def join_job(*, multihost: bool, coordinator_address: str | None,
             num_processes: int | None, process_id: int | None,
             heartbeat_timeout: int = 100) -> bool:
  """Joins the multi-process job the flags describe (False: a one-process run).

  The three explicit values come together or not at all; without them ``--multihost``
  relies on JAX's cluster detection and says what to pass where it finds none.
  """
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if given and len(given) != len(explicit):
    missing = sorted(set(explicit) - set(given))
    raise app.UsageError(f"--{' --'.join(sorted(given))} given without --{' --'.join(missing)}:"
                         " name the job with all three (or none, for auto-detection)")
  if given:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise app.UsageError(f"--process_id={process_id} is not in 0..{num_processes - 1}")
    if ":" not in coordinator_address:
      raise app.UsageError(f"--coordinator_address={coordinator_address!r}: expected host:port")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout)
    return True
  if not multihost:
    return False
  try:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout)
  except (ValueError, RuntimeError) as e:
    raise app.UsageError(
        f"--multihost: JAX found no cluster to join ({e}). On Cloud TPU, Slurm (srun), "
        "GKE or under mpirun it is detected; elsewhere pass --coordinator_address=HOST:PORT "
        "--num_processes=N --process_id=I on every process") from None
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  logging.getLogger("cai_jax").setLevel(logging.INFO)
  join_job(multihost=FLAGS.multihost, coordinator_address=FLAGS.coordinator_address,
           num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
           heartbeat_timeout=FLAGS.heartbeat_timeout)
  enable_compilation_cache(FLAGS.compilation_cache)
  jax.config.update("jax_threefry_partitionable", True)
  gin_setup.parse(FLAGS.gin_file, FLAGS.gin_param)
  workdir = paths.absolute(FLAGS.workdir)   # gs://... stays a URL
  with fail_fast():
    if jax.process_index() == 0:
      gin_setup.write_config(workdir, "config.gin", gin.config_str())
    gin_setup.run(workdir=workdir, **({"restart": True} if FLAGS.restart else {}))
    if jax.process_index() == 0:
      gin_setup.write_config(workdir, "operative_config.gin", gin.operative_config_str())
    processes.barrier("main:done")   # no process leaves before process 0 has written


@contextlib.contextmanager
def fail_fast():
  """In a multi-process job, a process whose program raises prints the error and exits at
  once: a normal exit would wait in JAX's shutdown barrier (minutes) while the others wait
  for it in a collective; a hard exit stops its heartbeats, which fails the others."""
  try:
    yield
  except BaseException:   # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    traceback.print_exc()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)   # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main)
