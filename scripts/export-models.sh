# Sourced by the training recipes: export_model DOSE [SUFFIX] writes models/manas-DOSEpctSUFFIX.onnx
# (and its cards) from the newest run of that dose in $TUNED, citing its data. A float16
# variant only for the default model (5 %, no suffix): at 10 % its outputs differ from torch
# by more than the 2 HU export allows (2.3 HU, v4), and export then keeps the float32 file alone.
# ENSEMBLE (default 3): the self-ensemble's orientations (export/graph.py; compare-v7.md).
export_model() {  # export DOSE [SUFFIX]
    local fp16=()
    [ "$1" = 5 ] && [ -z "${2:-}" ] && fp16=(--fp16)
    "$BIN" export "$(RUNS=$TUNED newest_run manas "$1")" --out "models/manas-${1}pct${2:-}.onnx" "${fp16[@]}" --overwrite \
        --ensemble "${ENSEMBLE:-3}" \
        --citation "Hong J, Reyngold M, Crane C, et al. (2021) Breath-hold CT and cone-beam CT images with expert manual organ-at-risk segmentations from radiation treatments of locally advanced pancreatic cancer (Pancreatic-CT-CBCT-SEG) [Data set]. The Cancer Imaging Archive. https://doi.org/10.7937/TCIA.ESHQ-4D90" \
        --citation "Wasserthal J, Breit H-C, Meyer MT, et al. (2023) TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images. Radiology: Artificial Intelligence 5(5):e230024. https://doi.org/10.1148/ryai.230024 (example series, Apache-2.0)" \
        --citation "Clark K, Vendt B, Smith K, et al. (2013) The Cancer Imaging Archive (TCIA): Maintaining and Operating a Public Information Repository. J Digit Imaging 26(6):1045-1057. https://doi.org/10.1007/s10278-013-9622-7"
}
