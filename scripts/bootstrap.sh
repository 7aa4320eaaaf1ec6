#!/usr/bin/env bash
# Creates .venv (with a real Python >= 3.11, never a pyenv shim: Buck2 launches the runtime
# with it, and a shim costs about 140 ms a start) and installs the project with its test extras.
# Idempotent and fast on the second run: a stamp keyed by pyproject.toml and the install's
# form skips the install.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
# The editable install as a plain path in a .pth file, not setuptools' import finder: the
# finder costs every Python start in the venv about 11 ms (it imports pathlib and re), and
# Buck2 waits for the worker front's start at the start of every command. An installed
# wheel has neither.
EDITABLE_MODE=compat
# The install copies bin/worker-runtime into the venv, so the stamp covers it too.
STAMP="$VENV/.installed-$( (cat "$ROOT/pyproject.toml" "$ROOT/bin/worker-runtime"; echo "editable_mode=$EDITABLE_MODE") | sha256sum | cut -c1-16)"

# The package's bytecode, current, as a wheel's install leaves it: where
# PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile every module it imports
# from source at every start (about 6 ms of a worker front's). Cheap when current.
compile_bytecode() {
  local out
  out=$("$VENV/bin/python" -m compileall -q "$ROOT/worker_runtime" 2>&1) || {
    echo "$out" >&2
    echo "bootstrap: error: worker_runtime does not compile (above)" >&2
    exit 1
  }
}

# One bootstrap at a time (scripts/test.sh and scripts/demo.sh started together on a
# fresh machine would otherwise build the same virtualenvs at once).
mkdir -p "$ROOT/.cache"
exec 9>"$ROOT/.cache/bootstrap.lock"
flock 9

find_python() {
  local candidate real
  for candidate in python3.11 python3.12 python3.13 python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    real=$("$candidate" -c 'import sys; print(sys.executable if sys.version_info >= (3, 11) else "")' 2>/dev/null) || continue
    if [ -n "$real" ]; then echo "$real"; return 0; fi
  done
  return 1
}

# buildifier (formatting and lint of .bzl and BUCK files) from the npm registry, pinned.
BUILDIFIER_VERSION=8.2.1
BUILDIFIER="$ROOT/.cache/npm/node_modules/@bazel/buildifier/buildifier-linux_amd64"
if ! [ -x "$BUILDIFIER" ] || ! grep -q "\"version\": \"$BUILDIFIER_VERSION\"" "$ROOT/.cache/npm/node_modules/@bazel/buildifier/package.json" 2>/dev/null; then
  command -v npm >/dev/null 2>&1 || { echo "bootstrap: error: npm is needed to install buildifier (apt-get install -y npm)" >&2; exit 1; }
  echo "bootstrap: installing buildifier $BUILDIFIER_VERSION" >&2
  mkdir -p "$ROOT/.cache/npm"
  # --loglevel=error, not --silent: that hides npm's own errors too.
  npm install --loglevel=error --no-audit --no-fund --prefix "$ROOT/.cache/npm" "@bazel/buildifier@$BUILDIFIER_VERSION" >&2 || {
    echo "bootstrap: error: npm could not install @bazel/buildifier@$BUILDIFIER_VERSION (above; is the npm registry reachable?)" >&2
    exit 1
  }
fi

# From Debian: Bazel 4.2.3 (bazel-bootstrap) drives the workers in the conformance tests;
# GHC 9.0.2 (ghc, with the GHC API as its hidden `ghc` package) builds and runs the
# Haskell worker and the Haskell example. objdump/nm (binutils) compare object files.
missing=()
command -v bazel >/dev/null 2>&1 || missing+=(bazel-bootstrap)
command -v ghc >/dev/null 2>&1 || missing+=(ghc)
# PostgreSQL's server binaries (BuildGrid's scheduler database, `worker-runtime cluster`).
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
# bubblewrap: the executor's sandbox (`worker-runtime executor --sandbox`).
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${missing[*]} (Debian)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # (set -e stops nothing left of a `&&`: a failed update went unnoticed.)
    if ! apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; then
      apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null || {
        echo "bootstrap: error: apt-get could not install ${missing[*]} (above: the network, or another apt holding its lock?)" >&2
        exit 1
      }
    fi
  else
    echo "bootstrap: warning: ${missing[*]} missing (apt-get install ${missing[*]}, as root); their tests will fail" >&2
  fi
fi

# BuildGrid (the REAPI server of `worker-runtime cluster`) in a virtualenv of its own:
# buildgrid 0.9.x on Python 3.13 where there is one (pyenv has one on this machine kind),
# else buildgrid 0.4.x on Python 3.11 (with psycopg2, its database driver). The tests also
# run the engine on 0.4.x, from a second virtualenv made the same way.
python_exactly() {  # a Python interpreter of exactly version $1 (never a pyenv shim), or nothing
  local candidate real
  for candidate in "python$1" "$(pyenv root 2>/dev/null)/versions/$1"*/bin/"python$1"; do
    real=$("$candidate" -c "import sys; print(sys.executable if sys.version_info[:2] == tuple(map(int, '$1'.split('.'))) else '')" 2>/dev/null) || real=""
    if [ -n "$real" ]; then echo "$real"; return 0; fi
  done
  return 1
}
venv_works() {  # whether virtualenv $1's interpreter runs (it is a link to one that may be gone)
  [ -x "$1/bin/python" ] && "$1/bin/python" -c "" >/dev/null 2>&1
}
make_buildgrid_venv() {  # $1 venv, $2 python, then the packages
  local venv=$1 python=$2 version=$3
  shift 2
  venv_works "$venv" && [ -x "$venv/bin/bgd" ] && [ -f "$venv/.installed-${version#buildgrid==}" ] && return 0
  echo "bootstrap: installing BuildGrid ${version#buildgrid==} into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" >"$venv.install.log" 2>&1; then
    tail -n 30 "$venv.install.log" >&2
    echo "bootstrap: error: installing BuildGrid failed; log: $venv.install.log" >&2
    exit 1
  fi
  touch "$venv/.installed-${version#buildgrid==}"
}
BUILDGRID_09="buildgrid==0.9.1"
BUILDGRID_04="buildgrid==0.4.4"
python313=$(python_exactly 3.13) || python313=""
python311=$(python_exactly 3.11) || python311=""
if [ -n "$python313" ]; then
  make_buildgrid_venv "$ROOT/.cache/buildgrid-venv" "$python313" "$BUILDGRID_09"
elif [ -n "$python311" ]; then
  make_buildgrid_venv "$ROOT/.cache/buildgrid-venv" "$python311" "$BUILDGRID_04" psycopg2-binary
else
  echo "bootstrap: error: BuildGrid needs Python 3.13 (buildgrid 0.9) or 3.11 (buildgrid 0.4); pyenv install 3.13" >&2
  exit 1
fi
if [ -n "$python311" ]; then
  make_buildgrid_venv "$ROOT/.cache/buildgrid04-venv" "$python311" "$BUILDGRID_04" psycopg2-binary
else
  echo "bootstrap: warning: no Python 3.11: the tests of the engine on buildgrid 0.4 will fail" >&2
fi

if [ -f "$STAMP" ] && venv_works "$VENV"; then
  compile_bytecode
  exit 0
fi
PYTHON=$(find_python) || { echo "bootstrap: error: no Python >= 3.11 found on PATH; install python3.11" >&2; exit 1; }
echo "bootstrap: creating $VENV with $PYTHON" >&2
# A venv whose creation was interrupted has its python but no pip, and one whose Python
# was removed (a pyenv uninstall) links to nothing (`venv` keeps such links): made again.
if [ -e "$VENV" ] && { ! venv_works "$VENV" || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }; then
  echo "bootstrap: $VENV is incomplete or its Python is gone: making it again" >&2
  rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
LOG="$VENV/bootstrap.log"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check \
    --config-settings "editable_mode=$EDITABLE_MODE" -e "$ROOT[test]" >"$LOG" 2>&1; then
  tail -n 40 "$LOG" >&2
  echo "bootstrap: error: pip install failed; full log: $LOG" >&2
  exit 1
fi
rm -f "$VENV"/.installed-*
# A checkout whose path holds a space (or is very long) cannot be pip's '#!' line.
bash "$ROOT/scripts/runtime_shebang.sh" "$VENV"
compile_bytecode
touch "$STAMP"
echo "bootstrap: ready" >&2
