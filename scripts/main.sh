#!/usr/bin/env bash
# Sets up the environment and runs the toy-world CAI experiment end to end, printing the
# results table. Rerunning resumes: finished phases are skipped.
#   WORKDIR=runs/my_run bash scripts/main.sh      # choose another output folder
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh | tail -n 1)
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" TF_CPP_MIN_LOG_LEVEL=2
WORKDIR="${WORKDIR:-runs/toy_world}"
start=$(date +%s)
"$PY" -m cai_jax.main --gin_file=experiments/toy_world.gin --workdir="$WORKDIR" "$@"
echo "toy-world experiment finished in $(( $(date +%s) - start )) s; results: $WORKDIR/report/results.md"
