#!/usr/bin/env bash
# Recipe v4 against v3 (issue 12): the shipped models' fine-tunes of both recipes, the
# baselines and BM3D on whole slices of the untouched test patients at 10, 5 and 2.5 %,
# each with the simulator's ramp grain (sigma 0) and with a soft-tissue kernel's grain
# (sigma 0.8 px: TG-233 NPS centroid about 0.17 cycles/px, the B/B30f/B40f/Br38f series'
# 0.14-0.19; bench/results/noise-texture.md), the same noise SD and seed.
#
#   scripts/compare-v4.sh            # after scripts/train-v4-models.sh
#   NAME=compare-v5 TUNED=runs/tuned-v5 ALSO="runs/tuned-v4 models/training/tuned-v3" \
#       scripts/compare-v4.sh        # recipe v5 (scripts/train-v5-models.sh) beside v4 and v3
#
# The baselines are the v3 comparison's (scripts/compare-v3.sh: RED-CNN and DnCNN trained at
# 5 % with the v3 recipe at equal wall time, no grain augmentation); at 10 and 2.5 % they
# stay in compare-v3-tables.md. Every report is skipped once written, so a stopped script
# is simply started again. Environment: scripts/v2-runs.sh; SLICES (default 6), OUT, GRAINS, DOSES,
# NAME (the reports' prefix), ALSO (run folders whose newest run of each dose is compared
# beside TUNED's; default the v3 fine-tunes).
set -uo pipefail  # not -e: evaluate exits 1 after naming a0002's truncated file, and goes on
cd "$(dirname "$0")/.."
export RUNS=${RUNS:-runs/shipped-v4} TUNED=${TUNED:-runs/tuned-v4}
source scripts/v2-runs.sh
SLICES=${SLICES:-6}
OUT=${OUT:-bench/results}
read -r -a GRAINS <<< "${GRAINS:-0 0.8}"
read -r -a DOSES <<< "${DOSES:-5 10 2.5}"
NAME=${NAME:-compare-v4}
read -r -a ALSO <<< "${ALSO:-models/training/tuned-v3}"
V3=models/training/shipped-v3

for grain in "${GRAINS[@]}"; do
    for dose in "${DOSES[@]}"; do
        methods=("$(RUNS=$TUNED newest_run manas "$dose")")
        for folder in "${ALSO[@]}"; do methods+=("$(RUNS=$folder newest_run manas "$dose")"); done
        if [ "$dose" = 5 ]; then
            methods+=("$(RUNS=$V3 newest_run redcnn 5)" "$(RUNS=$V3 newest_run dncnn 5)" --bm3d)
        else
            methods+=(--no-bm3d)
        fi
        for series in "${TEST_SERIES[@]}"; do
            out="$OUT/$NAME-${dose}pct-${series}-grain${grain}"
            if [ -f "$out/metrics.json" ]; then echo "done already: $out"; continue; fi
            "$BIN" evaluate "${methods[@]}" --data "$SHARED_DATA/ct/$series" --dose "$dose" \
                --noise-texture "$grain" --max-slices "$SLICES" --figures 2 --seed 0 \
                --device cpu --out "$out"
        done
    done
done
"$PY" bench/compare_tables.py --results "$OUT" --name "$NAME" $(printf -- "--grain %s " "${GRAINS[@]}")
