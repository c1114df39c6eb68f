#!/usr/bin/env bash
# Starts `python -m cai_jax.main --multihost "$@"` on every worker of the slice at once, in
# the background there (output in ~/cai_jax.log on each worker; see logs.sh). Each
# argument reaches cai_jax.main unchanged, spaces and quotes included.
set -euo pipefail
source "$(dirname "$0")/common.sh"
workdir=""
prev=""
for a in "$@"; do
  case "$a" in
    --workdir=*) workdir="${a#--workdir=}" ;;
  esac
  if [ "$prev" = "--workdir" ]; then workdir="$a"; fi
  prev="$a"
done
if [ -z "$workdir" ]; then
  echo "tpu_launch: run.sh needs --workdir=gs://BUCKET/PATH (every worker writes there)" >&2
  exit 2
fi
case "$workdir" in
  gs://*) ;;
  *) echo "tpu_launch: warning: --workdir=$workdir is not on gs://; the workers of a" \
       "multi-host slice do not share a local disk" >&2 ;;
esac
args=""
if [ "$#" -gt 0 ]; then args=" $(quote "$@")"; fi
on_workers all "cd ~/cai_jax && nohup ~/cai_venv/bin/python -m cai_jax.main --multihost$args \
> ~/cai_jax.log 2>&1 < /dev/null &"
