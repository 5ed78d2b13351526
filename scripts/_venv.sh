# Sourced by the scripts: make .venv if missing and install the project into it.
# Usage: . scripts/_venv.sh [EXTRAS]   (EXTRAS like "dev")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
STAMP=".venv/.installed-${1:-base}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${1:+[$1]}"
    touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
