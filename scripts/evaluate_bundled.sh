#!/usr/bin/env bash
# Evaluate a bundled-model candidate on the held-out sets (the numbers of its model card).
#   scripts/evaluate_bundled.sh [CHECKPOINT_DIR] [RESULTS_DIR]      (FIXED=4,8,16,32 for karl_cpu)
# - data_cache/heldout_v1: 64 crops of the 8 photos neither bundled model trained on + 72
#   procedural images from reserved seeds (configs/heldout_shared.yaml);
# - data_cache/heldout_v2: 2 crops of each of the 87 photos held out of karl_cpu_tae's training.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CKPT=${1:-assets/checkpoints/karl_cpu_tae}
OUT=${2:-results/karl_cpu_tae}
FIXED=${FIXED:-4,8,16,32,64}
[ -d data_cache/heldout_v1/photos ] || $PY scripts/export_heldout.py --config configs/heldout_shared.yaml \
    --out data_cache/heldout_v1 --crops-per-photo 8
[ -d data_cache/heldout_v2/photos ] || $PY scripts/export_heldout.py --config configs/cpu_tae_stage1.yaml \
    --out data_cache/heldout_v2 --crops-per-photo 2
$PY -m karl.eval --checkpoint "$CKPT" --data data_cache/heldout_v1/photos --out "$OUT/eval_v1" \
    --fixed "$FIXED" --epsilon 0.03,0.05,0.07,0.1,0.2 --lpips-net alex --overwrite --no-progress
$PY -m karl.eval --checkpoint "$CKPT" --data data_cache/heldout_v2/photos --out "$OUT/eval_v2" \
    --fixed "${FIXED##*,}" --epsilon 0.05,0.1,0.2 --search none --lpips-net alex --overwrite --no-progress
$PY scripts/adaptivity_check.py --checkpoint "$CKPT" --heldout data_cache/heldout_v1 --out "$OUT/adaptivity.json"
