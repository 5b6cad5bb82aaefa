#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): SD 2.1-sized extraction and SAE training against their
# peers in one run, one JSON. On one H100-class GPU it is meant to finish within 5 minutes:
#     benchmarks/gpu_check.sh                       # CUDA, float16, writes runs/gpu-check.json
#     benchmarks/gpu_check.sh --device cpu --tiny   # toy sizes on the CPU, in seconds
# PYTHON picks the interpreter (default: the project's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # random weights from committed configs only
exec "$PYTHON" benchmarks/gpu_check.py "$@"
