#!/usr/bin/env bash
# The GPU engine benchmark, as one device command (under 5 minutes on an H200):
#   run: bash benchmarks/gpu_engine.sh        (files come back from $OUT)
# A tiny-shape CPU check of the same code paths first (seconds), then the Lite shape on CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-artifacts/gpu}"
mkdir -p "$OUT"
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
"$PY" -m pip install -q -e . >/dev/null 2>&1 || true
timeout 60 "$PY" benchmarks/gpu_engine_bench.py --tiny --device cpu --rounds 1 --keys 2 --out "$OUT/tiny" >/dev/null
timeout 240 "$PY" benchmarks/gpu_engine_bench.py --device cuda --out "$OUT"
