#!/usr/bin/env bash
# Copies this checkout (the files git tracks or would track: no .venv, no runs/) to
# ~/cai_jax on every worker and installs it with TPU JAX (`pip install -e .[tpu]`) into
# the venv ~/cai_venv, made with the worker's ${TPU_PYTHON:-python3} (needs Python >= 3.11).
set -euo pipefail
source "$(dirname "$0")/common.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${TPU_PYTHON:-python3}"
archive="$(mktemp "${TMPDIR:-/tmp}/cai_jax_src.XXXXXX")"
trap 'rm -f "$archive"' EXIT
if git -C "$root" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  # tracked and untracked-but-not-ignored files; a tracked file deleted here is skipped
  # (tar's status 1 means a file changed while it was read: the archive is still made)
  git -C "$root" ls-files -z --cached --others --exclude-standard \
    | tar czf "$archive" -C "$root" --null --ignore-failed-read -T - || [ "$?" -eq 1 ]
else
  tar czf "$archive" -C "$root" --anchored --exclude=./.git --exclude=./.venv \
    --exclude=./runs --exclude='*/__pycache__' .
fi
gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":cai_jax_src.tgz "${TPU_FLAGS[@]}" --worker=all
check="import sys; sys.exit(sys.version_info < (3, 11))"
on_workers all "$(quote "$python") -c $(quote "$check") \
|| { echo 'tpu_launch: cai_jax needs Python >= 3.11 on the workers; set TPU_PYTHON' >&2; exit 1; }; \
mkdir -p ~/cai_jax && tar xzf ~/cai_jax_src.tgz -C ~/cai_jax \
&& $(quote "$python") -m venv ~/cai_venv \
&& ~/cai_venv/bin/pip install -q -e ~/cai_jax'[tpu]'"
