#!/usr/bin/env bash
# The CAI pipeline on a real instruct model (SmolLM2-135M-Instruct) on CPU: sets up the venv,
# converts the model once into the cache (scripts/fetch_real_models.sh), runs
# gin_configs/experiments/smollm2_cai.gin and prints where the report is. Rerunning resumes.
#   WORKDIR=runs/my_smollm2 bash scripts/smollm2.sh      # another output folder
#   bash scripts/smollm2.sh --gin_param=judge_eval.max_prompts=60   # extra gin bindings
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup_env.sh | tail -n 1)
MODEL=$(bash scripts/fetch_real_models.sh "$PY" --only smollm2-135m-instruct | tail -n 1)
MODEL=${MODEL#smollm2-135m-instruct=}
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" TF_CPP_MIN_LOG_LEVEL=2
WORKDIR="${WORKDIR:-runs/smollm2}"
start=$(date +%s)
"$PY" -m cai_jax.main --gin_file=experiments/smollm2_cai.gin --workdir="$WORKDIR" \
  --gin_param="SMOLLM2='$MODEL'" "$@"
echo "SmolLM2 CAI experiment finished in $(( $(date +%s) - start )) s; report: $WORKDIR/eval/results.md"
