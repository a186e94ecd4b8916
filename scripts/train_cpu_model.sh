#!/usr/bin/env bash
# Train the bundled demo model (preset `cpu`) end to end on this machine's CPU:
#   stage 0: our conv autoencoder; stage 1 + 1b: latent distillation (EIC + LTC; 1b
#   re-weights the token loss, see configs/cpu_stage1b.yaml); stage 2: pixel L1 +
#   LPIPS(AlexNet) + PatchGAN fine-tuning; then stage 1m + 2m: the same two stages again
#   with "minimal program" halting labels (issue 12, docs/HALTING_LABELS.md), which is what
#   makes the model halt. ABLATION=1 also runs stage 1p (paper labels, same budget as 1m).
# Each stage stops at its step count or its time budget (minutes), checkpoints every
# `ckpt_every` steps and resumes when re-run. Budgets: STAGE0_MIN STAGE1_MIN STAGE1B_MIN
# STAGE2_MIN STAGE1M_MIN STAGE2M_MIN. Stages 1m/1p ran one thread each, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
S0=${STAGE0_MIN:-30}; S1=${STAGE1_MIN:-75}; S1B=${STAGE1B_MIN:-80}; S2=${STAGE2_MIN:-15}
S1M=${STAGE1M_MIN:-28}; S2M=${STAGE2M_MIN:-45}

[ -f data_cache/corpus/manifest.json ] || $PY -m karl.data.corpus --out data_cache/corpus --with-debian
$PY -m karl.cli train --config configs/cpu_stage0.yaml train.max_minutes=$S0 "$@"
$PY -m karl.cli train --config configs/cpu_stage1.yaml train.max_minutes=$S1 "$@"
$PY -m karl.cli train --config configs/cpu_stage1b.yaml train.max_minutes=$S1B "$@"
$PY -m karl.cli train --config configs/cpu_stage2.yaml train.max_minutes=$S2 "$@"
if [ "${ABLATION:-0}" = 1 ]; then
  OMP_NUM_THREADS=1 $PY -m karl.cli train --config configs/cpu_stage1p.yaml train.max_minutes=$S1M "$@" &
fi
OMP_NUM_THREADS=${STAGE1M_THREADS:-1} $PY -m karl.cli train --config configs/cpu_stage1m.yaml train.max_minutes=$S1M "$@"
wait
$PY -m karl.cli train --config configs/cpu_stage2m.yaml train.max_minutes=$S2M "$@"
