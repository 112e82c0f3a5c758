#!/usr/bin/env bash
# The tests: set up .venv, then run the default (fast) suite.  Extra arguments go to pytest,
# e.g. `scripts/test.sh -m ""` runs the slow tests too.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
