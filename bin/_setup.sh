# Sourced by bin/capgate and bin/test: make .venv (Python 3.11+) hold capgate and its
# dependencies. Cheap when nothing changed: reinstalls only when pyproject.toml does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "capgate needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.capgate-installed-$1
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >&2
  if [ "$1" = dev ]; then extras='.[dev]'; else extras='.'; fi
  .venv/bin/python -m pip install -q -e "$extras" >&2
  touch "$stamp"
fi
