#!/usr/bin/env bash
# One GPU check (at most ~8 minutes on one H100): writes <out>/report.json and <out>/gpu_check.log.
#   scripts/gpu_check.sh [--out gpu_check/]     (other options: python scripts/gpu_check.py --help)
#   scripts/gpu_check.sh --cpu-smoke --out DIR  (toy sizes on the CPU: runs the end-to-end code, measures nothing)
# Runs from the repo without installing it (PYTHONPATH), with whatever torch/timm the machine has.
set -uo pipefail
cd "$(dirname "$0")/.."
out=gpu_check
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --out ]] && out=${args[i + 1]}
done
mkdir -p "$out"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
  "${PYTHON:-python3}" scripts/gpu_check.py "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
