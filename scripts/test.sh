#!/usr/bin/env bash
# The tests: set up .venv, then run the whole suite (~5-6 min on 2 cores).  Extra arguments go
# to pytest, e.g. `scripts/test.sh -k latency`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
