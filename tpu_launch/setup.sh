#!/usr/bin/env bash
# Copies this checkout to every worker and installs cai_jax with TPU jax.
source "$(dirname "$0")/common.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
tar czf /tmp/cai_jax_src.tgz -C "$root" --exclude=.venv --exclude=.git --exclude='runs' .
gcloud compute tpus tpu-vm scp /tmp/cai_jax_src.tgz "$TPU_NAME":~/cai_jax_src.tgz \
  --zone "$TPU_ZONE" "${TPU_PROJECT_FLAG[@]}" --worker=all
ssh_all "mkdir -p ~/cai_jax && tar xzf ~/cai_jax_src.tgz -C ~/cai_jax && \
  python3 -m venv ~/cai_venv && ~/cai_venv/bin/pip install -q -e ~/cai_jax 'jax[tpu]==0.10.2'"
