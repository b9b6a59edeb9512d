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
# Environment: SHARED_DATA (default ../shared/data), RUNS (default runs/shipped), DATA (a
# folder of links to the three series, made here by default), MANAS_CACHE (dataset cache).
# Never run two trainings at once on one CPU: with default threads they slow each other
# down many times over.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED_DATA=${SHARED_DATA:-../shared/data}
RUNS=${RUNS:-runs/shipped}
DATA=${DATA:-runs/shipped-data}
PRESET=${PRESET:-small}
SEARCH_EACH=${SEARCH_EACH:-0}
BIN=${BIN:-.venv/bin/manas-infer}
if [ ! -d "$DATA" ]; then
    mkdir -p "$DATA"
    ln -s "$(realpath "$SHARED_DATA/ct/pancreas-ct-cb-001")" "$DATA/pancreas-ct-cb-001"
    ln -s "$(realpath "$SHARED_DATA/ct/lung-pet-ct-dx-a0001")" "$DATA/lung-pet-ct-dx-a0001"
    ln -s "$(realpath "$SHARED_DATA/ct/totalseg-example-j2k")" "$DATA/totalseg-example-j2k"
fi

newest_run() { ls -d "$RUNS"/*-manas-"$1"pct-"$PRESET"* | sort | tail -n 1; }

train() {  # train DOSE [extra options]
    local dose=$1
    shift
    "$BIN" train --dose "$dose" --data "$DATA" --preset "$PRESET" \
        --test-patient lung-pet-ct-dx-a0001 --perceptual-weight 0 --seed 0 --runs "$RUNS" "$@"
}

export_model() {  # export DOSE
    "$BIN" export "$(newest_run "$1")" --out "models/manas-${1}pct.onnx" --fp16 --overwrite \
        --citation "Li P, Wang S, Li T, et al. (2020) A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis (Lung-PET-CT-Dx) [Data set]. The Cancer Imaging Archive. https://doi.org/10.7937/TCIA.2020.NNC2-0461" \
        --citation "Wasserthal J, Breit H-C, Meyer MT, et al. (2023) TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images. Radiology: Artificial Intelligence 5(5):e230024. https://doi.org/10.1148/ryai.230024 (example series, Apache-2.0)" \
        --citation "Clark K, Vendt B, Smith K, et al. (2013) The Cancer Imaging Archive (TCIA): Maintaining and Operating a Public Information Repository. J Digit Imaging 26(6):1045-1057. https://doi.org/10.1007/s10278-013-9622-7"
}

train 5
export_model 5
searched=$(newest_run 5)/genotype.json
for d in 10 2.5; do
    if [ "$SEARCH_EACH" = 1 ]; then
        train "$d"
    else
        train "$d" --genotype "$searched"
    fi
    export_model "$d"
done
