#!/usr/bin/env bash
# Shared settings and helpers of the tpu_launch scripts (sourced by them, not run).
#   TPU_NAME     the slice's name (required)
#   TPU_ZONE     its zone (required)
#   TPU_PROJECT  the Google Cloud project (optional; gcloud's default otherwise)
set -euo pipefail

# require VAR "what it holds": stop before any gcloud call when VAR is unset or empty.
require() {
  if [ -z "${!1:-}" ]; then
    echo "tpu_launch: $1 is not set: $2" >&2
    exit 2
  fi
}

# quote ARG...: the arguments as one string that a POSIX shell (the worker's login
# shell, which runs gcloud's --command) splits back into exactly these arguments.
quote() {
  local a out="" q="'\\''"
  for a in "$@"; do
    out+=" '${a//\'/$q}'"
  done
  printf '%s' "${out# }"
}

require TPU_NAME "the TPU VM slice's name, e.g. export TPU_NAME=cai-v5e-16"
require TPU_ZONE "the slice's zone, e.g. export TPU_ZONE=us-west4-a"
TPU_FLAGS=(--zone "$TPU_ZONE")
if [ -n "${TPU_PROJECT:-}" ]; then
  TPU_FLAGS+=(--project "$TPU_PROJECT")
fi

# on_workers WORKER COMMAND: runs COMMAND (one shell string) on worker WORKER (or all).
on_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${TPU_FLAGS[@]}" --worker="$1" --command "$2"
}
