#!/usr/bin/env bash
# Tails the log of worker ${WORKER:-0}.
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" "${TPU_PROJECT_FLAG[@]}" \
  --worker="${WORKER:-0}" --command "tail -n 200 -f ~/cai_jax.log"
