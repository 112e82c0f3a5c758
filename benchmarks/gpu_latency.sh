#!/usr/bin/env bash
# The latency ladder on one accelerator, in one short run (under 5 minutes on one GPU): the
# measured roofline, the autotune's formulation timings, and a latency ladder of random-weight
# models from 1e4 to 1e9 parameters in every precision (the same `[latency.ladder]` the quick
# sweep times, run with no training: `experiments/gpu_ladder.toml`), then its latency laws and
# figure.  Needs a jax that sees the device (pip install -e '.[cuda]' beforehand); installs
# nothing itself.  Writes Markdown tables, CSVs and the figure under $OUT (default
# benchmarks/gpu/); record them in benchmarks/README.md with the date and the device.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu}
mkdir -p "$OUT"
export JSCALE_CACHE_DIR="$OUT/cache"       # a fresh roofline and autotune, measured on this device
PY=${PYTHON:-python}
$PY -c "import jax; d = jax.devices()[0]; print(d.platform, d.device_kind); assert d.platform != 'cpu', 'no accelerator'"
$PY -m jscale info --refresh | tee "$OUT/info.txt"
$PY -m jscale autotune | tee "$OUT/autotune.md"
$PY -m jscale sweep experiments/gpu_ladder.toml --out "$OUT/ladder" --quiet | tail -5
$PY -m jscale figures "$OUT/ladder" --out "$OUT/figures" --format png --bootstrap 200 | tail -3
cp "$OUT/ladder/latency_ladder.csv" "$OUT/"
cat "$OUT/figures/fits.md" | tee "$OUT/fits.md"
$PY -m jscale bench latency --sizes 1e8 1e9 --batch 8 --csv "$OUT/latency_batch8.csv" | tee "$OUT/latency_batch8.md"
