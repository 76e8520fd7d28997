#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, builds the self-contained executable
# (dist/pycni), then unit + integration + robustness + end-to-end tests (containerd, podman, a
# chroot without Python), and the integration tests once more against the built executable.
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
echo "== the integration tests again, against the built executable (dist/pycni) =="
PYCNI_BIN_DIR=dist/pycni .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration
