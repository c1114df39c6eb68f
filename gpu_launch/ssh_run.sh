#!/usr/bin/env bash
# Multi-node GPU run of cai_jax over plain ssh: process i runs on the i-th host of HOSTS,
# all with --coordinator_address=<first host>:PORT --num_processes=N --process_id=i.
#
#   HOSTS="gpu1 gpu2" bash gpu_launch/ssh_run.sh --gin_file=runs/sft.gin --workdir=/shared/x
#
# Settings (environment):
#   HOSTS             ssh destinations, separated by spaces or commas (required)
#   COORDINATOR_HOST  address the other hosts reach process 0 at (default: the first host
#                     without its user@ part)
#   COORDINATOR_PORT  a free TCP port on that host (default 12355)
#   REMOTE_DIR        this checkout's path on every host (default: its path here)
#   CAI_PYTHON        interpreter, relative to REMOTE_DIR or absolute (default .venv/bin/python)
#   REMOTE_ENV        VAR=value words set for every process, e.g. "NCCL_DEBUG=INFO"
#   SSH_OPTS          extra ssh options (default "-o BatchMode=yes")
#   LOG_DIR           where host i's output goes, as i-HOST.log (default gpu_launch/logs/<time>)
# Waits for every process; exits 1 when any exits non-zero (each one's status is printed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${HOSTS:-}" ]; then
  echo "gpu_launch: HOSTS is not set: the ssh destinations, e.g. HOSTS=\"gpu1 gpu2\"" >&2
  exit 2
fi
read -r -a hosts <<< "${HOSTS//,/ }"
n="${#hosts[@]}"
if [ "$n" -eq 0 ]; then
  echo "gpu_launch: HOSTS names no host" >&2
  exit 2
fi
have_workdir=0
for a in "$@"; do
  case "$a" in
    --workdir=*|--workdir) have_workdir=1 ;;
  esac
done
if [ "$have_workdir" -eq 0 ]; then
  echo "gpu_launch: ssh_run.sh needs --workdir=PATH on a file system all hosts share" >&2
  exit 2
fi
first="${hosts[0]}"
coordinator="${COORDINATOR_HOST:-${first#*@}}:${COORDINATOR_PORT:-12355}"
remote_dir="${REMOTE_DIR:-$(cd "$here/.." && pwd)}"
python="${CAI_PYTHON:-.venv/bin/python}"
log_dir="${LOG_DIR:-$here/logs/$(date -u +%Y%m%d-%H%M%S)}"
read -r -a ssh_opts <<< "${SSH_OPTS--o BatchMode=yes}"
read -r -a remote_env <<< "${REMOTE_ENV:-}"
mkdir -p "$log_dir"

# quote ARG...: one string that the remote POSIX shell splits back into these arguments.
quote() {
  local a out="" q="'\\''"
  for a in "$@"; do
    out+=" '${a//\'/$q}'"
  done
  printf '%s' "${out# }"
}

pids=()
logs=()
trap 'kill ${pids[@]+"${pids[@]}"} 2> /dev/null || true' INT TERM
for ((i = 0; i < n; i++)); do
  cmd=(env ${remote_env[@]+"${remote_env[@]}"} "$python" -m cai_jax.main "--coordinator_address=$coordinator"
       "--num_processes=$n" "--process_id=$i" "$@")
  log="$log_dir/$i-${hosts[i]//[^A-Za-z0-9._-]/_}.log"
  ssh ${ssh_opts[@]+"${ssh_opts[@]}"} "${hosts[i]}" "cd $(quote "$remote_dir") && exec $(quote "${cmd[@]}")" \
    > "$log" 2>&1 < /dev/null &
  pids+=("$!")
  logs+=("$log")
  echo "gpu_launch: process $i on ${hosts[i]} (log $log)"
done

failed=0
for ((i = 0; i < n; i++)); do
  if wait "${pids[i]}"; then
    echo "gpu_launch: process $i on ${hosts[i]} finished"
  else
    rc=$?
    echo "gpu_launch: process $i on ${hosts[i]} failed (exit $rc); see ${logs[i]}" >&2
    failed=1
  fi
done
exit "$failed"
