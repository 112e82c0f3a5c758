# Sourced by the quick-start scripts: create .venv and install jscale (with the test and tokenize extras)
# into it, re-installing only when pyproject.toml changes.  Needs only python3 >= 3.11 and pip.
set -euo pipefail
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jscale needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.jscale-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setting up .venv (first run: installs jax, flax, optax, seaborn; log in .venv/install.log)" >&2
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[test,tokenize]'; } \
      > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "jscale: installing into .venv failed; full log: .venv/install.log" >&2
    exit 1
  fi
  touch "$stamp"
fi
