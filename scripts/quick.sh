#!/usr/bin/env bash
# The main job: set up .venv, then train one ladder model (1e5 non-embedding params) on the
# embedded default corpus and print its held-out loss.  Extra arguments go to `jscale train`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec .venv/bin/jscale train --size 1e5 --tokens 2e6 "$@"
