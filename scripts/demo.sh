#!/usr/bin/env bash
# The main job: installs what it needs, then builds the examples cold and warm through the
# runtime (as Buck2 would drive it), then examples/java on the embedded engine (remote
# one-shot against warm remote workers), and prints what the warm workers saved.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
exec "$ROOT/.venv/bin/worker-runtime" demo --remote "$@"
