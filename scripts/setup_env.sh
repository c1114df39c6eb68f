#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs cai_jax with its pinned dependencies.
# Prints the venv's python path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CAI_JAX_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
log=$(mktemp)
pip_install() {
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup failed: pip install $*" >&2
    exit 1
  fi
}
# torch is pinned to the local CPU wheel and installed first, so nothing pulls a CUDA build.
pip_install torch==2.13.0
pip_install -e '.[test]'
rm -f "$log"
"$VENV/bin/python" -c "import cai_jax, jax, flax, optax, orbax.checkpoint, grain, sentencepiece, gin" \
  || { echo "setup failed: cai_jax does not import" >&2; exit 1; }
echo "$VENV/bin/python"
