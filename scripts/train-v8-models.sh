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
# (lesions 3, lr 3e-4, gain x0.7-1.4, the family's grain): the default manas-5pct for 8
# epochs (its validation PSNR rose 0.8 dB over v6's in 2; 20 min), the other five for 4,
# the length of v6's own per-dose step (about 10 min each on 2 idle cores).
#
#   scripts/train-v8-models.sh                                  # all six, then export
#   EXPORT=0 DOSES=5 FAMILIES=fine scripts/train-v8-models.sh   # a part, no export
#
# Environment: as scripts/v2-runs.sh; TUNED (default runs/tuned-v8), DOSES, FAMILIES
# (default "fine soft"), EPOCHS (default: 8 for fine 5 %, 4 for the others), V6 (the v6 runs,
# default models/training/tuned-v6).
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
        epochs=4
        [ "$family/$d" = fine/5 ] && epochs=8
        train_or_resume manas "$d" "$PRESET" --init-weights "$init" \
            --genotype models/training/genotype-v8-full-resolution.json \
            --retrain-epochs "${EPOCHS:-$epochs}" --lr 3e-4 --noise-gain 0.7,1.4 \
            --noise-texture "${TEXTURE[$family]}" --lesions 3
    done
done
[ "${EXPORT:-1}" = 1 ] || exit 0
# Both families, scorecard, calibration; a family not grown yet is exported from v6.
soft=$TUNED/soft
[ -n "$(RUNS=$soft newest_run manas 5)" ] || soft=$V6/soft
FINE_RUNS=$TUNED/fine SOFT_RUNS=$soft scripts/export-shipped-models.sh
