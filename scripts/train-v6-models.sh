#!/usr/bin/env bash
# Recipe v6: both shipped families fine-tuned 4 more epochs at each dose with lesion
# insertion (--lesions 3: small faint round lesions in each training patch's anatomy,
# train/augment.py), everything else as their last step: the fine-grain family from the v3
# fine-tunes (models/training/tuned-v3), the coarse-grain -soft family from the v5 ones
# (tuned-v5, grain augmentation 0-0.9 kept). lr 3e-4, noise gain x0.7-1.4. Why lesions:
# trained on two patients with MSE, the nets flattened faint lesions (the 5 % model lowered
# the LCD phantom's 4 mm, 14 HU rod at 10 % dose at every strength from 50 %;
# bench/results/lesions.md). The default model (fine, 5 %) was first shipped from a run at
# lr 1e-4 (models/training/trials-v6/20261203-051754), because at 3e-4 its single pass ended
# above the demo chest's input error (48.2 against 47.9 HU); exported as the shipped
# self-ensemble of three orientations (export/graph.py) the 3e-4 run passes that gate
# (45.8 HU) and keeps every LCD rod, where the 1e-4 run lowers the 4 mm rod
# (bench/results/compare-v7.md). About 5 minutes a run on 2 idle cores.
#
#   scripts/train-v6-models.sh          # train (or resume) all six, then export, score,
#                                       # calibrate (scripts/export-shipped-models.sh)
#   EXPORT=0 DOSES=5 FAMILIES=fine scripts/train-v6-models.sh   # a part, no export
#
# Environment: as scripts/v2-runs.sh; TUNED (default runs/tuned-v6), DOSES, FAMILIES
# (default "fine soft"), LESIONS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUNS=${TUNED:-runs/tuned-v6} TUNED=${TUNED:-runs/tuned-v6}
read -r -a DOSES <<< "${DOSES:-5 10 2.5}"
read -r -a FAMILIES <<< "${FAMILIES:-fine soft}"
LESIONS=${LESIONS:-3}
source scripts/v2-runs.sh
source scripts/export-models.sh
declare -A FROM=([fine]=models/training/tuned-v3 [soft]=models/training/tuned-v5)
declare -A TEXTURE=([fine]=0,0 [soft]=0,0.9)

for family in "${FAMILIES[@]}"; do
    export RUNS=$TUNED/$family
    for d in "${DOSES[@]}"; do
        init=$(RUNS=${FROM[$family]} newest_run manas "$d")
        train_or_resume manas "$d" "$PRESET" --init-weights "$init" --retrain-epochs 4 \
            --lr 3e-4 --noise-gain 0.7,1.4 --noise-texture "${TEXTURE[$family]}" \
            --lesions "$LESIONS"
    done
done
[ "${EXPORT:-1}" = 1 ] || exit 0
V6_RUNS=$TUNED scripts/export-shipped-models.sh  # both families, scorecard, calibration
