#!/usr/bin/env bash
# Builds the self-contained pycni for /opt/cni/bin with PyInstaller (one-directory mode, see
# README "The executable for /opt/cni/bin"). Output: dist/pycni/ with the executable `pycni`, the
# links `pycni-ipam`, `pycni-portmap`, `pycni-loopback` and `loopback` beside it, and `_internal/`.
# Usage: bash build/build.sh            (uses .venv, installs PyInstaller into it if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python -c "import PyInstaller" 2>/dev/null ||
  bash scripts/pip.sh -e '.[build]'
rm -rf dist/pycni
.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/.work build/pycni.spec
for name in pycni-ipam pycni-portmap pycni-loopback loopback; do ln -s pycni "dist/pycni/$name"; done
env -i CNI_COMMAND=VERSION dist/pycni/pycni </dev/null >/dev/null   # it starts
echo "built dist/pycni ($(du -sh dist/pycni | cut -f1))"
