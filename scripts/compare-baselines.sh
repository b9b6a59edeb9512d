#!/usr/bin/env bash
# The paper's comparison at 5 % dose on this project's data (issue 4): RED-CNN and DnCNN
# trained by the same code, data, split, loss, augmentation and budget as the MANAS run of
# scripts/train-shipped-models.sh, then `manas-infer evaluate` with the low-dose input and
# BM3D, on the MANAS run's held-out test split (the chest patches every run was scored on)
# and on whole chest slices for the pictures.
#
#   scripts/compare-baselines.sh          # after scripts/train-shipped-models.sh
#
# Environment: see scripts/shipped-runs.sh; SLICES (whole slices to show, default 8).
# On 2 CPU cores: DnCNN ~10 min, RED-CNN ~15 min.
set -euo pipefail
cd "$(dirname "$0")/.."
SLICES=${SLICES:-8}
source scripts/shipped-runs.sh

for arch in dncnn redcnn; do
    train 5 --arch "$arch"
done
runs=("$(newest_run manas 5)" "$(newest_run redcnn 5)" "$(newest_run dncnn 5)")
"$BIN" evaluate "${runs[@]}" --figures 3 --device cpu --out bench/results/compare-5pct-test-split
"$BIN" evaluate "${runs[@]}" --data "$SHARED_DATA/ct/lung-pet-ct-dx-a0001" --dose 5 \
    --max-slices "$SLICES" --figures 2 --seed 0 --device cpu \
    --out bench/results/compare-5pct-whole-slices
