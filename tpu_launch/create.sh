#!/usr/bin/env bash
# Creates the TPU VM slice $TPU_NAME of type $TPU_TYPE with runtime image $TPU_VERSION.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require TPU_TYPE "the accelerator type, e.g. export TPU_TYPE=v5litepod-16"
require TPU_VERSION "the runtime image, e.g. export TPU_VERSION=v2-alpha-tpuv5-lite"
gcloud compute tpus tpu-vm create "$TPU_NAME" "${TPU_FLAGS[@]}" \
  --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION"
