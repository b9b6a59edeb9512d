#!/usr/bin/env bash
# The shipped models, recipe v4 (2026-12-02): recipe v3 (scripts/train-v2-models.sh) taught
# the noise grain of soft-tissue kernels, which the v3 models leave in place
# (bench/results/noise-texture.md, compare-v3.md "Noise grain").
#
#   1. the v3 base net (5 %, models/training/shipped-v3) fine-tuned at 5 % for 12 epochs
#      with the grain augmentation: each pair's noise apodized by a Gaussian of sigma
#      0-1.2 px at the same SD (the ramp's grain to the soft kernels' and below:
#      simulate/texture.py), the noise gain x0.4-3.0 of the base, lr 5e-4 (runs in $RUNS);
#   2. those weights fine-tuned at each shipped dose, 10, 5 and 2.5 %, as in v3 but with
#      the grain augmentation kept: gain x0.7-1.4, lr 5e-4, 4 epochs at 10 and 5 %, 8 at
#      2.5 % (runs in $TUNED);
#   3. export, score onto the cards, recalibrate the automatic choice, as in v3.
#
# Every step resumes (models/training/README.md). Environment: scripts/v2-runs.sh, with
# RUNS (default runs/shipped-v4), TUNED (default runs/tuned-v4) and V3_BASE (the v3 base run).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUNS=${RUNS:-runs/shipped-v4} TUNED=${TUNED:-runs/tuned-v4}
V3_BASE=${V3_BASE:-models/training/shipped-v3/20261202-021432-manas-5pct-cpu-long}
TEXTURE=${TEXTURE:-0,1.2}
source scripts/v2-runs.sh
source scripts/export-models.sh

train_or_resume manas 5 "$PRESET" --init-weights "$V3_BASE" --retrain-epochs 12 --lr 5e-4 \
    --noise-gain 0.4,3.0 --noise-texture "$TEXTURE"
base=$(newest_run manas 5)
for d in 10 5 2.5; do
    epochs=$([ "$d" = 2.5 ] && echo 8 || echo 4)
    RUNS=$TUNED train_or_resume manas "$d" "$PRESET" --init-weights "$base" \
        --retrain-epochs "$epochs" --lr 5e-4 --noise-gain 0.7,1.4 --noise-texture "$TEXTURE"
done
[ "${EXPORT:-1}" = 1 ] || exit 0
for d in 10 5 2.5; do export_model "$d"; done
"$PY" -m manas_infer.evaluate.scorecard --write
"$PY" -m manas_infer.runtime.calibrate
