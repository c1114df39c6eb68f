#!/usr/bin/env bash
# Creates the TPU VM slice $TPU_NAME of type $TPU_TYPE with runtime $TPU_VERSION.
source "$(dirname "$0")/common.sh"
: "${TPU_TYPE:?set TPU_TYPE, e.g. v5litepod-16}"
: "${TPU_VERSION:?set TPU_VERSION, e.g. v2-alpha-tpuv5-lite}"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$TPU_ZONE" "${TPU_PROJECT_FLAG[@]}" \
  --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION"
