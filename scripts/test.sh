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
# The real-Buck2 tier (tests/buck2/) runs wherever a buck2 binary is found; say which.
BUCK2_BIN=${BUCK2:-$(command -v buck2 || true)}
if [ -n "${BUCK2:-}" ] && ! [ -x "$(command -v "$BUCK2" || true)" ]; then
  echo "== real-Buck2 tier: error: BUCK2=$BUCK2 is not an executable file (unset BUCK2 to skip the tier)" >&2
  exit 2
fi
if [ -n "$BUCK2_BIN" ]; then
  echo "== real-Buck2 tier: RUNS, with $BUCK2_BIN ($("$BUCK2_BIN" --version 2>/dev/null | head -n 1))"
else
  echo "== real-Buck2 tier: NOT RUN: no buck2 binary (put buck2 on PATH or set BUCK2=/path/to/buck2); tests/buck2 is skipped"
fi
echo "== pytest"; exec "$PY/pytest" --durations=40 "$@"
