#!/usr/bin/env bash
# Installs what pycni's demo, build and tests need on a fresh Debian 12 machine (run as root):
# Debian packages (iproute2, iptables, nftables, conntrack, ping, the reference CNI plugins, and for
# the end-to-end tests containerd, runc, podman, busybox-static, curl) and a virtualenv in .venv
# with pycni, its test dependencies and PyInstaller. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(iproute2 iptables nftables conntrack iputils-ping containernetworking-plugins python3-venv
      containerd runc podman busybox-static curl)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,build]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/pycni --version >/dev/null
