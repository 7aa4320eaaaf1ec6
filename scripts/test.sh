#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then lint, types and tests.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
PY="$ROOT/.venv/bin"
echo "== ruff format --check"; "$PY/ruff" format --check .
echo "== ruff check"; "$PY/ruff" check .
echo "== mypy"; "$PY/mypy"
echo "== pytest"; exec "$PY/pytest" "$@"
