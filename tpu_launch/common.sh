#!/usr/bin/env bash
# Shared settings for the tpu_launch scripts.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}"
: "${TPU_ZONE:?set TPU_ZONE}"
TPU_PROJECT_FLAG=()
[ -n "${TPU_PROJECT:-}" ] && TPU_PROJECT_FLAG=(--project "$TPU_PROJECT")
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" "${TPU_PROJECT_FLAG[@]}" \
    --worker=all --command "$1"
}
