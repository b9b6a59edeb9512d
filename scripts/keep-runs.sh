#!/usr/bin/env bash
# Keep the shipped-model runs in the repository so a long CPU training outlives its machine.
#
#   scripts/keep-runs.sh save      # runs/shipped-v2/* -> models/training/shipped-v2/ (commit it)
#   scripts/keep-runs.sh restore   # models/training/shipped-v2/* -> runs/shipped-v2/
#
# A run directory holds only small files (config, genotype, curves, and checkpoints of a
# 0.2 M-parameter net with its optimiser: a few MB); the dataset cache is not kept: it is
# rebuilt from ../shared/data, bit for bit, the first time a restored run resumes
# (scripts/train-v2-models.sh passes --data, so the run finds it on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/shipped-v2}
KEPT=${KEPT:-models/training/$(basename "$RUNS")}
case "${1:-}" in
    save)
        mkdir -p "$KEPT"
        for run in "$RUNS"/*/; do
            [ -f "$run/config.json" ] || continue
            rm -rf "${KEPT:?}/$(basename "$run")"
            cp -a "$run" "$KEPT/$(basename "$run")"
            find "$KEPT/$(basename "$run")" -name '*.tmp' -delete
        done
        du -sh "$KEPT"
        ;;
    restore)
        mkdir -p "$RUNS"
        for run in "$KEPT"/*/; do
            cp -a "$run" "$RUNS/"
        done
        ls "$RUNS"
        ;;
    *)
        echo "usage: $0 save|restore" >&2
        exit 2
        ;;
esac
