#!/usr/bin/env bash
# Follows ~/cai_jax.log (written by run.sh) on worker ${WORKER:-0}.
set -euo pipefail
source "$(dirname "$0")/common.sh"
on_workers "${WORKER:-0}" "tail -n ${LOG_LINES:-200} -f ~/cai_jax.log"
