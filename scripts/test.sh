#!/usr/bin/env bash
# The tests: set up .venv, lint (ruff check, ruff format --check), then run the whole suite over
# all cores (pytest-xdist; under 5 min on 2 cores).  Extra arguments go to pytest, e.g.
# `scripts/test.sh -m "not slow"` (the fast tier, about 2 min) or `scripts/test.sh -k latency`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
.venv/bin/ruff check jscale tests benchmarks scripts
.venv/bin/ruff format --check --quiet jscale tests benchmarks scripts
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
