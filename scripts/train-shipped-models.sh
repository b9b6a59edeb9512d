#!/usr/bin/env bash
# Train and export the shipped models (models/manas-{10,5,2.5}pct.onnx) with the project's
# own pipeline: small preset, seed 0, no perceptual term (no VGG-16 weights can be
# downloaded here). Training data: the pancreas patient (Philips, iDose) and the
# TotalSegmentator series (Siemens, FBP-like); the chest patient is held out for the
# card's metrics. One training patient alone does not transfer to the chest
# (bench/results/train-small-5pct.md).
#
#   scripts/train-shipped-models.sh            # all three doses, one after the other
#   scripts/train-shipped-models.sh 5          # one dose
#   PRESET=paper scripts/train-shipped-models.sh 5   # on a GPU: the paper's preset
#
# Environment: SHARED_DATA (default ../shared/data), RUNS (default runs/shipped), DATA (a
# folder of links to the three series, made here by default), MANAS_CACHE (dataset cache).
# Run one dose at a time on a CPU, or give each its own OMP_NUM_THREADS=1: two trainings
# with default threads on the same cores slow each other down many times over.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED_DATA=${SHARED_DATA:-../shared/data}
RUNS=${RUNS:-runs/shipped}
DATA=${DATA:-runs/shipped-data}
PRESET=${PRESET:-small}
BIN=${BIN:-.venv/bin/manas-infer}
if [ ! -d "$DATA" ]; then
    mkdir -p "$DATA"
    ln -s "$(realpath "$SHARED_DATA/ct/pancreas-ct-cb-001")" "$DATA/pancreas-ct-cb-001"
    ln -s "$(realpath "$SHARED_DATA/ct/lung-pet-ct-dx-a0001")" "$DATA/lung-pet-ct-dx-a0001"
    ln -s "$(realpath "$SHARED_DATA/ct/totalseg-example-j2k")" "$DATA/totalseg-example-j2k"
fi
for dose in "${@:-5 10 2.5}"; do
  for d in $dose; do
    "$BIN" train --dose "$d" --data "$DATA" --preset "$PRESET" \
        --test-patient lung-pet-ct-dx-a0001 --perceptual-weight 0 --seed 0 --runs "$RUNS"
    run=$(ls -d "$RUNS"/*-manas-"$d"pct-"$PRESET"* | sort | tail -n 1)
    "$BIN" export "$run" --out "models/manas-${d}pct.onnx" --fp16 --overwrite \
        --citation "Li P, Wang S, Li T, et al. (2020) A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis (Lung-PET-CT-Dx) [Data set]. The Cancer Imaging Archive. https://doi.org/10.7937/TCIA.2020.NNC2-0461" \
        --citation "Wasserthal J, Breit H-C, Meyer MT, et al. (2023) TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images. Radiology: Artificial Intelligence 5(5):e230024. https://doi.org/10.1148/ryai.230024 (example series, Apache-2.0)" \
        --citation "Clark K, Vendt B, Smith K, et al. (2013) The Cancer Imaging Archive (TCIA): Maintaining and Operating a Public Information Repository. J Digit Imaging 26(6):1045-1057. https://doi.org/10.1007/s10278-013-9622-7"
  done
done
