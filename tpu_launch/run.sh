#!/usr/bin/env bash
# Runs `python -m cai_jax.main --multihost "$@"` on all workers (in the background there).
source "$(dirname "$0")/common.sh"
args=$(printf '%q ' "$@")
ssh_all "cd ~/cai_jax && nohup ~/cai_venv/bin/python -m cai_jax.main --multihost $args \
  > ~/cai_jax.log 2>&1 &"
