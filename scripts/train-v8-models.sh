#!/usr/bin/env bash
# Recipe v8: the shipped v6 networks grown by a full-resolution path and fine-tuned.
#
# Why: the searched genotype (models/training/shipped-v2/...-small/genotype.json) halves the
# resolution in its first cell and comes back to full resolution only through nearest
# upsampling. Its convolutions cannot tell an even pixel from an odd one, so no correction
# it makes alternates pixel by pixel: a pattern of alternating rows passes through untouched
# (kept x1.00, where 77 % of a 0.25 cycles/px pattern is removed), and at 5 % the networks
# left 2/3 of the noise at the Nyquist frequency: the fine grid of rows and columns in their
# zooms (bench/results/grid.md). models/training/genotype-v8-full-resolution.json is that
# genotype with the grid's own full-resolution path kept as well (stem -> (1,1) -> (2,1),
# two transfer cells with the searched transfer ops): 30.2 GFLOPs a pass, 90.5 for the
# three-orientation self-ensemble, under a tenth of RED-CNN's 916.8.
#
# Each network starts from its v6 weights with the new path at zero (train/network.py
# load_grown: it first computes exactly what v6 did) and is tuned with v6's settings
# (lesions 3, lr 3e-4, gain x0.7-1.4, the family's grain) for 4 epochs, the length of v6's
# own per-dose step (10-13 min each on 2 idle cores; the -soft three 36 min in all). The
# default manas-5pct takes two steps: 8 epochs so (18 min; kept in fine-base/), which
# lowered the LCD phantom's 4 mm, 14 HU rod at its 10 % (AUC change -0.113 [-0.233, -0.027],
# tests/test_lcd_gate.py), then 4 more with twice the lesions (--lesions 6, 11 min), which
# keeps it (-0.092 [-0.210, +0.003]) at the cost of the first step's PSNR gain
# (bench/results/compare-v8.md).
#
#   scripts/train-v8-models.sh                                  # all six, then export
#   EXPORT=0 DOSES=5 FAMILIES=fine scripts/train-v8-models.sh   # a part, no export
#
# Environment: as scripts/v2-runs.sh; TUNED (default runs/tuned-v8), DOSES, FAMILIES
# (default "fine soft"), V6 (the v6 runs, default models/training/tuned-v6).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUNS=${TUNED:-runs/tuned-v8} TUNED=${TUNED:-runs/tuned-v8}
read -r -a DOSES <<< "${DOSES:-5 10 2.5}"
read -r -a FAMILIES <<< "${FAMILIES:-fine soft}"
V6=${V6:-models/training/tuned-v6}
source scripts/v2-runs.sh
declare -A TEXTURE=([fine]=0,0 [soft]=0,0.9)

for family in "${FAMILIES[@]}"; do
    export RUNS=$TUNED/$family
    for d in "${DOSES[@]}"; do
        init=$(RUNS=$V6/$family newest_run manas "$d")
        grow=(--genotype models/training/genotype-v8-full-resolution.json --lr 3e-4
              --noise-gain 0.7,1.4 --noise-texture "${TEXTURE[$family]}")
        if [ "$family/$d" = fine/5 ]; then
            RUNS=$TUNED/fine-base train_or_resume manas 5 "$PRESET" --init-weights "$init" \
                "${grow[@]}" --retrain-epochs 8 --lesions 3
            init=$(RUNS=$TUNED/fine-base newest_run manas 5)
            grow=("${grow[@]:2}")  # the same architecture from here: no --genotype
            train_or_resume manas 5 "$PRESET" --init-weights "$init" "${grow[@]}" \
                --retrain-epochs 4 --lesions 6
        else
            train_or_resume manas "$d" "$PRESET" --init-weights "$init" "${grow[@]}" \
                --retrain-epochs 4 --lesions 3
        fi
    done
done
[ "${EXPORT:-1}" = 1 ] || exit 0
# Both families, scorecard, calibration; a family not grown yet is exported from v6.
soft=$TUNED/soft
[ -n "$(RUNS=$soft newest_run manas 5)" ] || soft=$V6/soft
FINE_RUNS=$TUNED/fine SOFT_RUNS=$soft scripts/export-shipped-models.sh
