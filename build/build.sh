#!/usr/bin/env bash
# Builds the self-contained pycni for /opt/cni/bin with PyInstaller (one-directory mode, see
# README "The executable for /opt/cni/bin"). Output: dist/pycni/ with the executable `pycni`, the
# links `pycni-ipam`, `pycni-portmap`, `pycni-bandwidth`, `pycni-loopback` and `loopback` beside it, and `_internal/`.
# `_internal/bin/python3.11` is the interpreter PyInstaller bundled libpython from, made to load
# that libpython ($ORIGIN rpath) and to take its path from `python3.11._pth` (isolated, no site):
# `pycni install` points the installed names at a script it runs, which starts ~4 ms faster than
# PyInstaller's bootloader.
# Usage: bash build/build.sh            (uses .venv, installs PyInstaller into it if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python -c "import PyInstaller" 2>/dev/null ||
  bash scripts/pip.sh -e '.[build]'
rm -rf dist/pycni
.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/.work build/pycni.spec
for name in pycni-ipam pycni-portmap pycni-bandwidth pycni-loopback loopback; do ln -s pycni "dist/pycni/$name"; done

INTERNAL=dist/pycni/_internal
PY=$(readlink -f .venv/bin/python)
mkdir -p "$INTERNAL/bin"
cp "$PY" "$INTERNAL/bin/python3.11"
patchelf --force-rpath --set-rpath '$ORIGIN/..' "$INTERNAL/bin/python3.11"
printf '..\n../python3.11/lib-dynload\n' > "$INTERNAL/bin/python3.11._pth"
# every bundled ELF finds its bundled dependencies first (as under the bootloader): extension
# modules and libraries carry the build machine's RUNPATH, which would miss the bundle (libffi for
# ctypes, libssl, libnftables' libraries) on a node that lacks them
.venv/bin/python - "$INTERNAL" <<'PY'
import os, subprocess, sys
internal = os.path.realpath(sys.argv[1])
for root, _, files in os.walk(internal):
    for name in files:
        path = os.path.join(root, name)
        if os.path.islink(path) or ".so" not in name or os.path.dirname(path) == os.path.join(internal, "bin"):
            continue
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        up = os.path.relpath(internal, root)
        subprocess.run(["patchelf", "--set-rpath", "$ORIGIN" if up == "." else f"$ORIGIN/{up}", path], check=True)
PY
# the interpreter and the bundled libpython must be one Python, and it must find only the bundle
want=$(.venv/bin/python -c 'import sys; print(sys.version)')
got=$("$INTERNAL/bin/python3.11" -c 'import sys, cni; assert sys.flags.isolated and sys.flags.no_site, sys.flags; print(sys.version)')
[ "$want" = "$got" ] || { echo "build: bundled interpreter is '$got', expected '$want'" >&2; exit 1; }
"$INTERNAL/bin/python3.11" -c 'import sys; assert all(p.startswith(sys.argv[1]) for p in sys.path), sys.path' "$(readlink -f "$INTERNAL")"

env -i CNI_COMMAND=VERSION dist/pycni/pycni </dev/null >/dev/null   # it starts
echo "built dist/pycni ($(du -sh dist/pycni | cut -f1))"
