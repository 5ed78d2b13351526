# Sourced by the scripts: make .venv if missing and install the project into it.
# Usage: VENV_EXTRAS=dev; . scripts/_venv.sh    (VENV_EXTRAS unset: no extras)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
EXTRAS="${VENV_EXTRAS:-}"
STAMP=".venv/.installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
    touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
