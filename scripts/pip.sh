#!/usr/bin/env bash
# pip install into .venv, quietly; on failure shows pip's output and fails (never hidden).
#   bash scripts/pip.sh -e '.[test,build]'
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
if ! .venv/bin/pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
  sed '/^WARNING: Location/d' "$log" >&2
  rm -f "$log"
  echo "pip install $* failed" >&2
  exit 1
fi
rm -f "$log"
