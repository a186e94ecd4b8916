#!/usr/bin/env bash
# Evaluate a trained cpu-preset model on the held-out set (numbers for its model card).
#   scripts/evaluate_bundled.sh [CHECKPOINT_DIR] [RESULTS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CKPT=${1:-assets/checkpoints/karl_cpu}
OUT=${2:-results/karl_cpu}
[ -d data_cache/heldout/photos ] || $PY scripts/export_heldout.py --out data_cache/heldout
$PY -m karl.evaluate --checkpoint "$CKPT" --data data_cache/heldout --out "$OUT/eval" \
    --fixed 4,8,16,32 --epsilon 0.03,0.05,0.07,0.09,0.12,0.16,0.2 --lpips-net alex --overwrite --no-progress
$PY scripts/adaptivity_check.py --checkpoint "$CKPT" --heldout data_cache/heldout --out "$OUT/adaptivity.json"
