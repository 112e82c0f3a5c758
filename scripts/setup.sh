# Sourced by the quick-start scripts: create .venv and install jscale (with test extras)
# into it, re-installing only when pyproject.toml changes.  Needs only python3 >= 3.11 and pip.
set -euo pipefail
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jscale needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.jscale-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
