#!/usr/bin/env bash
# The latency benchmark on an accelerator, in one short run (a few minutes on one GPU): the
# measured roofline, prefill + KV-cache decode vs size for every precision at batch 1 and 8,
# and the formulation grid at 1e8.  Needs a jax that sees the device (pip install -e '.[cuda]'
# beforehand); installs nothing itself.  Writes Markdown tables and CSVs under $OUT (default
# benchmarks/gpu/); record them in benchmarks/README.md with the date and the device.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu}
mkdir -p "$OUT"
export JSCALE_CACHE_DIR="$OUT/cache"       # a fresh roofline, measured on this device
PY=${PYTHON:-python}
$PY -c "import jax; d = jax.devices()[0]; print(d.platform, d.device_kind); assert d.platform != 'cpu', 'no accelerator'"
$PY -m jscale info --refresh | tee "$OUT/info.txt"
$PY -m jscale bench latency --sizes 1e6 1e7 1e8 3.16e8 1e9 --csv "$OUT/latency.csv" | tee "$OUT/latency.md"
$PY -m jscale bench latency --sizes 1e8 1e9 --batch 8 --csv "$OUT/latency_batch8.csv" | tee "$OUT/latency_batch8.md"
$PY benchmarks/decode_formulations.py --size 1e8 | tee "$OUT/formulations_1e8.md"
