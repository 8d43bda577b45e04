#!/usr/bin/env bash
# Train the bundled model on a CUDA machine in one short window, from a corpus cache made
# on the CPU machine (so it learns this machine's CPython stdlib with the same tokenizer).
#
#   Here (CPU):   .venv/bin/python -m model.train --prepare-only --out .gpu     # → .gpu/corpus, ~6.5 MB
#   There (GPU):  bash benchmarks/gpu_train.sh [CORPUS_DIR] [MINUTES] [extra latent-train flags]
#                 (from the repository root; carry .gpu/corpus; CORPUS_DIR defaults to it)
#
# MINUTES (default 8) bounds the training command: start-up, training, the final evaluation on
# every held-out token and the export. A smoke run of two steps (~30 s) comes first and
# switches transformers' experts kernel to "eager" if the default one fails; SMOKE=0 skips it.
# Writes the model folder to $OUT/bundled/ (7 files, model.safetensors ~15.1 MiB) and
# train.log, log.jsonl, smoke.log, env.txt to $OUT/. PYTHON (default python3) runs it.
set -euo pipefail

CORPUS="${1:-.gpu/corpus}"
MINUTES="${2:-8}"
shift $(( $# < 2 ? $# : 2 ))
OUT="${OUT:-gpu-out}"
PY="${PYTHON:-python3}"
RUN="${RUN_DIR:-runs/gpu}"          # checkpoints stay here; only the results go to $OUT
rm -rf "$RUN"
mkdir -p "$OUT" "$RUN"

{ nvidia-smi || true
  "$PY" -c 'import sys, torch, transformers, tokenizers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, torch.cuda.get_device_name(0))'
} > "$OUT/env.txt" 2>&1 || true

EXPERTS=auto
if [ "${SMOKE:-1}" != 0 ]; then
  if ! "$PY" -m model.train --corpus-cache "$CORPUS" --device cuda --max-steps 2 --batch-size 8 \
        --out "$RUN/smoke" --eval-rows 2 --data-workers 0 > "$OUT/smoke.log" 2>&1; then
    EXPERTS=eager
    echo "gpu_train: smoke run failed with the default experts kernel; retrying with eager" | tee -a "$OUT/smoke.log"
    "$PY" -m model.train --corpus-cache "$CORPUS" --device cuda --max-steps 2 --batch-size 8 \
        --out "$RUN/smoke2" --eval-rows 2 --data-workers 0 --experts eager >> "$OUT/smoke.log" 2>&1
  fi
fi

status=0
"$PY" -m model.train --corpus-cache "$CORPUS" --device cuda --minutes "$MINUTES" \
    --seq-len 1024 --batch-size 128 --experts "$EXPERTS" --out "$RUN/run" "$@" 2>&1 \
    | tee "$OUT/train.log" || status=$?

cp "$RUN/run/log.jsonl" "$OUT/log.jsonl" 2>/dev/null || true
if [ -f "$RUN/run/model/model.safetensors" ]; then
  mkdir -p "$OUT/bundled"
  cp "$RUN/run/model/"* "$OUT/bundled/"
  ls -la "$OUT/bundled"
else
  echo "gpu_train: no model folder was written (status $status)" >&2
  exit 1
fi
exit "$status"
