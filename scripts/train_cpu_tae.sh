#!/usr/bin/env bash
# Train the bundled model `karl_cpu_tae` (preset cpu_tae, issue 22) end to end on a CPU:
#   the offline photo corpus (Debian wallpaper / photo packages + PyPI sample photos),
#   stage 1: latent distillation onto the frozen pretrained TAEF2 base (EIC + LTC,
#            minimal-program halting labels), configs/cpu_tae_stage1.yaml;
#   stage 2: pixel L1 + LPIPS(AlexNet) through the frozen TAEF2 decoder, configs/cpu_tae_stage2.yaml;
#   then the held-out set, karl-eval and the adaptivity check (scripts/evaluate_bundled.sh).
# Each stage stops at its step count or its time budget (minutes: STAGE1_MIN, STAGE2_MIN),
# checkpoints every `ckpt_every` steps and resumes when re-run with the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
S1=${STAGE1_MIN:-70}; S2=${STAGE2_MIN:-45}  # how the bundled release was made (MODEL_CARD.md)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

[ -f data_cache/corpus/manifest.json ] || $PY -m karl.data.corpus --out data_cache/corpus --with-debian
$PY -m karl.cli train --config configs/cpu_tae_stage1.yaml train.max_minutes=$S1 "$@"
$PY -m karl.cli train --config configs/cpu_tae_stage2.yaml train.max_minutes=$S2 "$@"
