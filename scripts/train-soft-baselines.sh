#!/usr/bin/env bash
# The baselines taught a soft-tissue kernel's noise grain, as the -soft models were (issue 12,
# item 6: the same data, loss and budget as the MANAS models they are compared with).
# RED-CNN and DnCNN of the v3 comparison (scripts/compare-v3.sh: trained at 5 % for the wall
# time of the v3 base net) fine-tuned with recipe v5's grain augmentation
# (--noise-texture 0,0.9, noise gain x0.7-1.4, lr 3e-4, MSE, the same data and split) for
# about the wall time the -soft family's 5 % model spent on top of v3: v4 base 32 min +
# v4 5 % 9.4 min + v5 5 % 8.6 min = 50 min. RED-CNN's epochs take 30-37 min here and DnCNN's
# 21-27, so 2 epochs each (60-74 and 42-54 min). Then both, beside manas-5pct-soft's run,
# the v3 baselines and BM3D, on whole slices of the untouched test patients at 5 %, at the
# simulator's ramp grain and a soft kernel's (sigma 0.8 px).
#
#   scripts/train-soft-baselines.sh                  # RED-CNN and DnCNN (about 2 hours)
#   BASELINES=redcnn scripts/train-soft-baselines.sh # one of them
#
# Runs in $RUNS (default runs/baselines-soft; kept in models/training/baselines-soft, best
# weights only). A stopped run is continued; a written report is skipped.
# Environment: as scripts/v2-runs.sh; BASELINES, SLICES (default 6), OUT.
set -uo pipefail  # not -e: evaluate exits 1 after naming a0002's truncated file, and goes on
cd "$(dirname "$0")/.."
export RUNS=${RUNS:-runs/baselines-soft}
source scripts/v2-runs.sh
SLICES=${SLICES:-6}
OUT=${OUT:-bench/results}
read -r -a BASELINES <<< "${BASELINES:-redcnn dncnn}"
V3=models/training/shipped-v3
V5=models/training/tuned-v5

for arch in "${BASELINES[@]}"; do
    init=$(RUNS=$V3 newest_run "$arch" 5)
    train_or_resume "$arch" 5 "$PRESET" --arch "$arch" --init-weights "$init" \
        --retrain-epochs 2 --lr 3e-4 --noise-gain 0.7,1.4 --noise-texture 0,0.9 || exit 1
done

methods=("$(RUNS=$V5 newest_run manas 5)")
for arch in "${BASELINES[@]}"; do
    methods+=("$(newest_run "$arch" 5)" "$(RUNS=$V3 newest_run "$arch" 5)")
done
for grain in 0.8 0; do
    for series in "${TEST_SERIES[@]}"; do
        out="$OUT/soft-baselines-5pct-${series}-grain${grain}"
        if [ -f "$out/metrics.json" ]; then echo "done already: $out"; continue; fi
        "$BIN" evaluate "${methods[@]}" --bm3d --data "$SHARED_DATA/ct/$series" --dose 5 \
            --noise-texture "$grain" --max-slices "$SLICES" --figures 2 --seed 0 \
            --device cpu --out "$out"
    done
done
