#!/usr/bin/env bash
# Train the default model on one GPU machine in one short window, from a pre-tokenized corpus
# made here; or unpack what such a run sent back.
#
# Here (CPU), once:
#   python -m model.train corpus                        # ~/.cache/latent/corpus/{files,report.md}
#   python -m model.train --prepare-only --corpus-dir ~/.cache/latent/corpus/files \
#       --vocab-size 16384 --tokenizer-mb 120 --max-mib 40 --out .gpu
#       → .gpu/corpus: tokenizer files, ids.xz (≤ 40 MiB: the tree travels too, 64 MiB in all),
#         corpus.npz, corpus.json, report.md / report.json (git-ignored: /.gpu/)
# There (H200, 16 cores, no network; device tool: command "bash benchmarks/gpu_train.sh",
# carry [".gpu/corpus"], timeout_s 600):
#   bash benchmarks/gpu_train.sh [CORPUS_DIR] [MINUTES] [extra latent-train flags]
#       CORPUS_DIR defaults to .gpu/corpus; MINUTES (default 6) bounds the stable phase of
#       the training command; then comes the decay branch the model is exported from (10 % of
#       the steps, so ~0.6 min more), the evaluation on the held-out rows (1M tokens per set)
#       and the export — smoke run included, inside a 10-minute device call.
#       A smoke run first (~30 s: three steps with transformers' default experts kernel; on
#       failure with the eager one) picks the flags the real run uses. COMPILE=1 tries
#       torch.compile first (unmeasured on the GPU so far: on the CPU it took 60 s to compile
#       even the tiny preset, and inductor falls back to eager for RoPE's complex ops, so it
#       is off by default in a 7-minute window). PRESET (default small), BATCH (128), SEQ
#       (1024), SMOKE=0 (skip it), PYTHON (python3) and DEVICE (cuda; DEVICE=cpu runs the same
#       steps on a CPU, slowly) are read from the environment.
#   Sends back (at most 8 files of ≤ 16 MiB): the weight shards model-*.safetensors (or
#   model.safetensors), run.tar.gz (config.json, index, tokenizer files, README.md model card,
#   log.jsonl), train.log, smoke.log, env.txt.
# Back here:
#   bash benchmarks/gpu_train.sh --unpack FILES_AT DEST    # DEST becomes the model folder
set -euo pipefail

if [ "${1:-}" = "--unpack" ]; then
  FROM="$2"; DEST="$3"
  rm -rf "$DEST"; mkdir -p "$DEST"
  tar -xzf "$FROM/run.tar.gz" -C "$DEST"
  cp "$FROM"/*.safetensors "$DEST"/
  echo "gpu_train: model folder in $DEST"; ls -la "$DEST"
  exit 0
fi

CORPUS="${1:-.gpu/corpus}"
MINUTES="${2:-6}"
shift $(( $# < 2 ? $# : 2 ))
OUT="${OUT:-gpu-out}"
PY="${PYTHON:-python3}"
PRESET="${PRESET:-small}"
DEVICE="${DEVICE:-cuda}"
RUN="${RUN_DIR:-runs/gpu}"          # checkpoints stay here; only the results go to $OUT
export PYTHONUNBUFFERED=1
rm -rf "$RUN"
mkdir -p "$OUT" "$RUN"

{ nvidia-smi || true
  "$PY" -c 'import sys, torch, transformers, tokenizers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, torch.cuda.get_device_name(0))'
  nproc; du -sh "$CORPUS"
} > "$OUT/env.txt" 2>&1 || true

FLAGS=(--experts auto)
TRIES=("--experts auto" "--experts eager")
[ "${COMPILE:-0}" = 1 ] && TRIES=("--compile --experts auto" "${TRIES[@]}")
if [ "${SMOKE:-1}" != 0 ]; then
  : > "$OUT/smoke.log"
  ok=0
  for try in "${TRIES[@]}"; do
    echo "gpu_train: smoke run with $try" >> "$OUT/smoke.log"
    # shellcheck disable=SC2086
    if timeout 150 "$PY" -m model.train --corpus-cache "$CORPUS" --device "$DEVICE" --preset "$PRESET" \
          --max-steps 3 --batch-size 16 --seq-len "${SEQ:-1024}" --out "$RUN/smoke" --eval-rows 2 \
          --final-eval-rows 2 --heldout-tokens 20000 --data-workers 0 $try >> "$OUT/smoke.log" 2>&1; then
      read -r -a FLAGS <<< "$try"; ok=1; break
    fi
  done
  [ "$ok" = 1 ] || { echo "gpu_train: every smoke run failed (see smoke.log)" >&2; exit 1; }
fi

status=0
"$PY" -m model.train --corpus-cache "$CORPUS" --device "$DEVICE" --preset "$PRESET" --minutes "$MINUTES" \
    --seq-len "${SEQ:-1024}" --batch-size "${BATCH:-128}" --log-every 50 --eval-rows 256 "${FLAGS[@]}" \
    --out "$RUN/run" "$@" 2>&1 | tee "$OUT/train.log" || status=$?

MODEL="$RUN/run/model"
if ls "$MODEL"/*.safetensors > /dev/null 2>&1; then
  cp "$MODEL"/*.safetensors "$OUT"/
  cp "$RUN/run/log.jsonl" "$MODEL"/ 2>/dev/null || true
  tar -czf "$OUT/run.tar.gz" -C "$MODEL" --exclude='*.safetensors' .
  ls -la "$OUT"
else
  echo "gpu_train: no model folder was written (status $status)" >&2
  exit 1
fi
exit "$status"
