#!/usr/bin/env bash
# Export every shipped model again from its kept training run (models/training), after a
# change to what an exported file computes (export/graph.py): no training, the same weights.
# Then re-score the cards (CI holds the models to them), recalibrate the automatic choice and
# evaluate the shipped models on the demo's chest (bench/results/shipped-chest-Dpct/).
#
#   scripts/export-shipped-models.sh       # about 15 minutes on 2 CPU cores
#
# The fine-grain manas-{10,5,2.5}pct come from FINE_RUNS (default models/training/tuned-v8/
# fine), the coarse-grain manas-{10,5,2.5}pct-soft from SOFT_RUNS (default
# models/training/tuned-v8/soft): both recipe v8, scripts/train-v8-models.sh. V6_RUNS=ROOT
# sets both to ROOT/fine and ROOT/soft (how the training recipes call this; ROOT=
# models/training/tuned-v6 exports the v6 models again). Environment: as scripts/v2-runs.sh;
# FINE_RUNS, SOFT_RUNS, V6_RUNS.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${V6_RUNS:-}" ]; then FINE_RUNS=$V6_RUNS/fine SOFT_RUNS=$V6_RUNS/soft; fi
FINE_RUNS=${FINE_RUNS:-models/training/tuned-v8/fine}
SOFT_RUNS=${SOFT_RUNS:-models/training/tuned-v8/soft}
source scripts/v2-runs.sh
source scripts/export-models.sh
# The cards state each fine-tune's base runs (found by the paths the runs were started with:
# models/training/tuned-v6, -v5 and -v3, in the repository). They also list the training
# series and check parity on real test slices from the run's dataset cache (dataset.json
# names it): without it the card says "synthetic phantom slices" and lists no series.
for d in 10 5 2.5; do TUNED=$FINE_RUNS export_model "$d"; done
for d in 10 5 2.5; do TUNED=$SOFT_RUNS export_model "$d" -soft; done
"$PY" -m manas_infer.evaluate.scorecard --write
"$PY" -m manas_infer.runtime.calibrate
scripts/evaluate-shipped-models.sh
