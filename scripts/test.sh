#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, builds the self-contained executable
# (dist/pycni), then unit + integration + robustness + end-to-end tests (containerd, podman, a
# chroot without Python), and the integration tests once more against the built executable as
# `pycni install` lays it out (the names run the build's own interpreter through its launcher).
# Integration and end-to-end tests run inside throwaway network namespaces (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# with arguments, they replace the default run: e.g. `PYCNI_LONG=1 bash scripts/test.sh tests/robustness`
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
fi
bash build/build.sh
.venv/bin/python -m pytest -q -p no:cacheprovider tests
echo "== the integration tests again, against the build as \`pycni install\` lays it out =="
rm -rf build/.work/installed
dist/pycni/pycni install --bin-dir build/.work/installed/bin
PYCNI_BIN_DIR=build/.work/installed/bin .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration
