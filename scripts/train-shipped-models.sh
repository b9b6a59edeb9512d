#!/usr/bin/env bash
# Train and export the shipped models (models/manas-{10,5,2.5}pct.onnx) with the project's
# own pipeline: small preset, seed 0, training augmentation on (the default), no perceptual
# term (no VGG-16 weights can be downloaded here). Training data: the pancreas patient
# (Philips, iDose) and the TotalSegmentator series (Siemens, FBP-like); the chest patient is
# held out for the cards' metrics.
#
# On a CPU the architecture is searched once, at 5 % (about 35 minutes on 2 cores), and
# retrained from scratch for each other dose (about 5 minutes each): three searches would
# take close to two hours. SEARCH_EACH=1 searches every dose, as the paper does; on a GPU,
# PRESET=paper SEARCH_EACH=1.
#
#   scripts/train-shipped-models.sh                 # 5 % (search), then 10 and 2.5 %
#   SEARCH_EACH=1 PRESET=paper scripts/train-shipped-models.sh
#
# Environment: see scripts/shipped-runs.sh, and SEARCH_EACH. Never run two trainings at once
# on one CPU: with default threads they slow each other down many times over.
set -euo pipefail
cd "$(dirname "$0")/.."
SEARCH_EACH=${SEARCH_EACH:-0}
source scripts/shipped-runs.sh

export_model() {  # export DOSE
    "$BIN" export "$(newest_run manas "$1")" --out "models/manas-${1}pct.onnx" --fp16 --overwrite \
        --citation "Li P, Wang S, Li T, et al. (2020) A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis (Lung-PET-CT-Dx) [Data set]. The Cancer Imaging Archive. https://doi.org/10.7937/TCIA.2020.NNC2-0461" \
        --citation "Wasserthal J, Breit H-C, Meyer MT, et al. (2023) TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images. Radiology: Artificial Intelligence 5(5):e230024. https://doi.org/10.1148/ryai.230024 (example series, Apache-2.0)" \
        --citation "Clark K, Vendt B, Smith K, et al. (2013) The Cancer Imaging Archive (TCIA): Maintaining and Operating a Public Information Repository. J Digit Imaging 26(6):1045-1057. https://doi.org/10.1007/s10278-013-9622-7"
}

train 5
export_model 5
searched=$(newest_run manas 5)/genotype.json
for d in 10 2.5; do
    if [ "$SEARCH_EACH" = 1 ]; then
        train "$d"
    else
        train "$d" --genotype "$searched"
    fi
    export_model "$d"
done
