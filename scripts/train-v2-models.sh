#!/usr/bin/env bash
# The shipped models (recipe v3, shipped 2026-12-02: bench/results/compare-v3.md):
# train and export models/manas-{10,5,2.5}pct.onnx with the project's
# own pipeline, MSE loss (no VGG-16 weights can be downloaded here), seed 0, augmentation
# on with the noise gain x0.4-3.0 (the default). Data and split: scripts/v2-runs.sh.
#
#   1. search at 5 % with the `small` preset on 40 slices per training patient (64 px
#      patches; about 40 minutes on 2 cores);
#   2. retrain that architecture from scratch at 5 % with `cpu-long` (sixteen 96 px patches
#      of every training slice, 24 epochs: 66 minutes on 2 cores for the two abdomens);
#      GENOTYPE (scripts/v2-runs.sh) skips step 1 with the architecture kept from v2;
#   3. fine-tune those 5 % weights at each shipped dose, 10, 5 and 2.5 %, with the noise gain
#      narrowed to x0.7-1.4 (lr 5e-4; 5 epochs at 10 and 5 %, 10 at 2.5 %; on data simulated
#      at that dose; runs in $TUNED) instead of searching and retraining each dose: the base
#      net, blind over x0.4-3.0, removes a fixed share of any noise; the fine-tune teaches
#      each model the noise of its dose (bench/results/v3-over-doses.md, compare-v3.md);
#   4. export all three with a float16 variant and their cards, then score them on the
#      untouched test patients onto their cards (the numbers tests/test_model_scores.py
#      holds them to), and recalibrate the automatic choice (models/noise-levels.json).
#
# Every step resumes: run the script again after an interruption (or on another machine
# with the run directories copied over, see models/training/README.md) and it continues
# the newest unfinished run of each step exactly where it stopped.
#
# Environment: see scripts/v2-runs.sh. Never run two trainings at once on one CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/v2-runs.sh

source scripts/export-models.sh

searched=$GENOTYPE
if [ -z "$searched" ]; then
    searched=$(newest_run manas 5 "$SEARCH_PRESET")
    if [ -z "$searched" ] || [ ! -f "$searched/genotype.json" ]; then  # search (1 retrain epoch)
        train_or_resume manas 5 "$SEARCH_PRESET" --max-slices 40 --retrain-epochs 1
        searched=$(newest_run manas 5 "$SEARCH_PRESET")
    fi
    searched=$searched/genotype.json
fi
train_or_resume manas 5 "$PRESET" --genotype "$searched"
base=$(newest_run manas 5)
for d in 10 5 2.5; do
    epochs=$([ "$d" = 2.5 ] && echo 10 || echo 5)
    RUNS=$TUNED train_or_resume manas "$d" "$PRESET" --init-weights "$base" \
        --retrain-epochs "$epochs" --lr 5e-4 --noise-gain 0.7,1.4
    export_model "$d"
done
"$PY" -m manas_infer.evaluate.scorecard --write
"$PY" -m manas_infer.runtime.calibrate
