#!/usr/bin/env bash
# The main job: set up .venv, run the quick sweep (experiments/quick.toml: an IsoFLOP grid of 7
# sizes x 3 compute budgets as WSD branches, a second seed on 2 sizes, 6 precisions, on the
# embedded default corpus: train and checkpoint in 2 processes side by side, then quantize,
# evaluate and time alone, and time the latency ladder) into runs/quick, then fit the scaling
# and compute-optimal laws and render the figures and fit table into runs/quick/figures.  A
# rerun skips every point already done; extra arguments go to `jscale sweep` (e.g. --force).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
.venv/bin/jscale sweep experiments/quick.toml --train-jobs 2 "$@"
.venv/bin/jscale figures runs/quick --out runs/quick/figures
echo
cat runs/quick/figures/fits.md
