#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then unit + integration tests.
# Integration tests run the real executables inside throwaway network namespaces (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# with arguments, they replace the default target: e.g. `PYCNI_LONG=1 bash scripts/test.sh tests/robustness`
if [ $# -eq 0 ]; then set -- tests; fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
