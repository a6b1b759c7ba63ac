#!/usr/bin/env bash
# tools/gpu_check.sh [--device cuda|cuda:N|cpu] [--steps N] [--precisions ...] [--groups ...]
# One prepared check of every recipe's training steps on a GPU (realistic sizes, fp32 / fp16 /
# bf16 AMP; --device cpu: tiny sizes for CI): samples/s, GPU busy %, peak memory and finite
# losses per step group; exit status 1 on any failure. tools/gpu_check.py says what it runs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$root/tools/gpu_check.py" "$@"
