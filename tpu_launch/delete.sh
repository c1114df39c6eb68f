#!/usr/bin/env bash
# Deletes the slice.
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" "${TPU_PROJECT_FLAG[@]}" --quiet
