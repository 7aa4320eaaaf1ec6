#!/usr/bin/env bash
# Makes VENV/bin/worker-runtime start where its interpreter's path cannot be a '#!' line:
# one holding white space (the kernel splits the line there: "bad interpreter") or longer
# than the kernel reads (127 bytes). Such a script is rewritten to start under /bin/sh,
# which runs that interpreter on it (a few ms more a start); any other is left as pip
# wrote it. Run by scripts/bootstrap.sh after every install; idempotent.
set -euo pipefail
VENV=$1
SCRIPT="$VENV/bin/worker-runtime"
first=$(head -n 1 "$SCRIPT")
case $first in
  "#!/bin/sh") exit 0 ;;  # rewritten already
esac
interpreter=${first#\#!}
if [ "${#first}" -le 127 ] && [[ $interpreter != *[[:space:]]* ]]; then
  exit 0
fi
# The interpreter's path quoted for sh (each ' as '\''), named whole: a path next to $0
# would be wrong for a symlink to the script.
squote="'"
quoted="'${interpreter//$squote/$squote\\$squote$squote}'"
tmp="$SCRIPT.tmp.$$"
{
  echo "#!/bin/sh"
  # To sh: run the interpreter on this file. To python: a string, then the script.
  printf "''''exec %s \"\$0\" \"\$@\" # '''\n" "$quoted"
  tail -n +2 "$SCRIPT"
} >"$tmp"
chmod 755 "$tmp"
mv "$tmp" "$SCRIPT"
