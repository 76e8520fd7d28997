#!/usr/bin/env bash
# Installs what pycni's demo and tests need on a fresh Debian 12 machine (run as root):
# Debian packages (iproute2, iptables, nftables, conntrack, ping, the reference CNI plugins) and a
# virtualenv in .venv with pycni and its test dependencies. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(iproute2 iptables nftables conntrack iputils-ping containernetworking-plugins python3-venv)
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
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/pycni --version >/dev/null
