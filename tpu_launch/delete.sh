#!/usr/bin/env bash
# Deletes the slice $TPU_NAME (billing stops; whatever is on its disks is lost).
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" "${TPU_FLAGS[@]}" --quiet
