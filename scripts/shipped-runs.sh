# Sourced by train-shipped-models.sh and compare-baselines.sh: one definition of the data,
# the split, the loss and the preset, so the shipped models and the baselines they are
# compared with are trained alike.
#
# Environment: SHARED_DATA (default ../shared/data), RUNS (default runs/shipped), DATA (a
# folder of links to the three series, made here by default), PRESET (default small), BIN
# (default .venv/bin/manas-infer), MANAS_CACHE (dataset cache).
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

newest_run() {  # newest_run ARCH DOSE: the newest run directory of that network and dose
    ls -d "$RUNS"/*-"$1"-"$2"pct-"$PRESET"* | sort | tail -n 1
}

train() {  # train DOSE [extra options, e.g. --arch dncnn or --genotype FILE]
    local dose=$1
    shift
    "$BIN" train --dose "$dose" --data "$DATA" --preset "$PRESET" \
        --test-patient lung-pet-ct-dx-a0001 --perceptual-weight 0 --seed 0 --runs "$RUNS" "$@"
}
