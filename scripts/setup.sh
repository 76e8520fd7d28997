#!/usr/bin/env bash
# Installs what pycni needs on a fresh Debian 12 machine (run as root), for one of two uses:
#   bash scripts/setup.sh demo   iproute2, ping, python3-venv, and a virtualenv .venv with pycni
#   bash scripts/setup.sh [test] also nftables, iptables, conntrack, the reference CNI plugins (side
#                                by side tests), containerd, runc, podman, busybox-static, curl (the
#                                end-to-end tests), iperf3 (shaping tests, bench/tunnel.py,
#                                bench/portbind.py), and pycni's test dependencies and PyInstaller
# Safe to run again: it skips what is there. A failed install stops it with the installer's output.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${1:-test}
PKGS=(iproute2 iputils-ping python3-venv)
EXTRAS=""
case "$PROFILE" in
  demo) ;;
  test) PKGS+=(iptables nftables conntrack containernetworking-plugins containerd runc podman busybox-static curl patchelf iperf3)
        EXTRAS="[test,build]" ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac

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
bash scripts/pip.sh -e ".$EXTRAS"
if [ "$PROFILE" = test ]; then
  .venv/bin/python build/cri_stubs.py      # the agent's CRI stubs (GC), generated from the CRI proto
fi
.venv/bin/pycni --version >/dev/null
