#!/usr/bin/env bash
# Judge the shipped models on whole slices of the held-out chest patient, each at its own
# dose, against the low-dose input and BM3D (`manas-infer evaluate`). models/README.md is
# written by hand from these reports and the cards' scorecards (the generator that rewrote
# it from an early template was removed: it overwrote the recipes' history).
#
#   scripts/evaluate-shipped-models.sh            # 10, 5 and 2.5 %
#
# Environment: SHARED_DATA (default ../shared/data), SLICES (per dose, default 8, evenly
# spaced over the series), BIN (default .venv/bin/manas-infer).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED_DATA=${SHARED_DATA:-../shared/data}
SLICES=${SLICES:-8}
BIN=${BIN:-.venv/bin/manas-infer}
for d in 10 5 2.5; do
    [ -f "models/manas-${d}pct.onnx" ] || continue
    "$BIN" evaluate "manas-${d}pct" --data "$SHARED_DATA/ct/lung-pet-ct-dx-a0001" --dose "$d" \
        --max-slices "$SLICES" --figures 2 --seed 0 --device cpu \
        --out "bench/results/shipped-chest-${d}pct"
done
