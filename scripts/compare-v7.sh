#!/usr/bin/env bash
# The shipped models as shipped (ONNX, self-ensemble of 3 orientations: export/graph.py) on
# the untouched test patients at 10, 5 and 2.5 %, both noise grains, on the same slices and
# noise (seed 0) as compare-v6, whose reports (the v6 runs alone, v3, v5, RED-CNN, DnCNN,
# BM3D) are merged into the tables beside them instead of being computed again (BM3D is run
# again at 5 % only, for the pictures). At 10 and 2.5 % (ramp grain), where compare-v6 has no
# baselines, sibling reports on the same slices score RED-CNN and DnCNN (their 5 % networks,
# scripts/compare-v3.sh) and BM3D (...-baselines, about 4 min each), the shipped 5 % MANAS
# model (...-5pct-weights: with the 5 % baselines, every network at the same budget).
#
#   scripts/compare-v7.sh        # after scripts/export-shipped-models.sh; about 30 minutes
#
# Environment: as scripts/v2-runs.sh; SLICES (default 6), OUT, GRAINS, DOSES, NAME (default
# compare-v7), ALSO (earlier comparisons merged, default compare-v6), V6_RUNS (the kept runs),
# BASELINES (default 1; 0: score no baseline here, merge an earlier comparison's through ALSO).
#
#   NAME=compare-v8 ALSO="compare-v7 compare-v6" BASELINES=0 V6_RUNS=models/training/tuned-v8 \
#       scripts/compare-v7.sh     # recipe v8 beside v7, v6 and their baselines, about 15 min
set -uo pipefail  # not -e: evaluate exits 1 after naming a0002's truncated file, and goes on
cd "$(dirname "$0")/.."
source scripts/v2-runs.sh
SLICES=${SLICES:-6}
OUT=${OUT:-bench/results}
read -r -a GRAINS <<< "${GRAINS:-0 0.8}"
read -r -a DOSES <<< "${DOSES:-5 10 2.5}"
NAME=${NAME:-compare-v7}
read -r -a ALSO <<< "${ALSO:-compare-v6}"
V6_RUNS=${V6_RUNS:-models/training/tuned-v6}

for grain in "${GRAINS[@]}"; do
    for dose in "${DOSES[@]}"; do
        for series in "${TEST_SERIES[@]}"; do
            out="$OUT/$NAME-${dose}pct-${series}-grain${grain}"
            if [ -f "$out/metrics.json" ]; then echo "done already: $out"; continue; fi
            bm3d=--no-bm3d
            [ "$dose" = 5 ] && bm3d=--bm3d  # the pictures at the target dose show BM3D beside
            # The shipped fine model's run beside it: the same weights in one pass (torch).
            single=$(RUNS=$V6_RUNS/fine newest_run manas "$dose")
            "$BIN" evaluate "manas-${dose}pct" "manas-${dose}pct-soft" "$single" "$bm3d" \
                --data "$SHARED_DATA/ct/$series" --dose "$dose" --noise-texture "$grain" \
                --max-slices "$SLICES" --figures 2 --seed 0 --device cpu --out "$out"
        done
    done
done
V3=models/training/shipped-v3
for dose in "${DOSES[@]}"; do
    [ "$dose" = 5 ] && continue
    for series in "${TEST_SERIES[@]}"; do
        [ "${BASELINES:-1}" = 1 ] || continue
        # Equal budget: every network as trained at 5 % (no per-dose step for any).
        out="$OUT/$NAME-${dose}pct-${series}-grain0-baselines"
        if [ -f "$out/metrics.json" ]; then echo "done already: $out"; continue; fi
        "$BIN" evaluate "$(RUNS=$V3 newest_run redcnn 5)" "$(RUNS=$V3 newest_run dncnn 5)" --bm3d \
            --data "$SHARED_DATA/ct/$series" --dose "$dose" --noise-texture 0 \
            --max-slices "$SLICES" --figures 2 --seed 0 --device cpu --out "$out"
    done
    for series in "${TEST_SERIES[@]}"; do
        out="$OUT/$NAME-${dose}pct-${series}-grain0-5pct-weights"
        [ -f "$out/metrics.json" ] || "$BIN" evaluate manas-5pct --no-bm3d \
            --data "$SHARED_DATA/ct/$series" --dose "$dose" --noise-texture 0 \
            --max-slices "$SLICES" --figures 0 --seed 0 --device cpu --out "$out"
    done
done
"$PY" bench/compare_tables.py --results "$OUT" --name "$NAME" \
    $(printf -- "--grain %s " "${GRAINS[@]}") $(printf -- "--also %s " "${ALSO[@]}")
