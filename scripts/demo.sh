#!/usr/bin/env bash
# Demo: two pods on a bridge through `pycni exec`, their addresses, a ping between them, then a
# clean teardown. Everything happens inside throwaway network namespaces: a "node" namespace plays
# the host (bridge, IPAM state), two pod namespaces sit beside it. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo

ID="pycni-demo-$$"
NODE="$ID-node"
WORK=$(mktemp -d /tmp/pycni-demo.XXXXXX)
cleanup() {
  for ns in "$ID-pod1" "$ID-pod2" "$NODE"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/demo.conflist" <<JSON
{
  "cniVersion": "1.1.0",
  "name": "demo",
  "plugins": [
    {
      "type": "pycni",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": true,
      "hairpinMode": true,
      "logFile": "$WORK/pycni.log",
      "ipam": {
        "type": "pycni-ipam",
        "dataDir": "$WORK/ipam",
        "ranges": [[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:10:244::/64"}]]
      }
    }
  ]
}
JSON

ip netns add "$NODE"
ip netns exec "$NODE" ip link set lo up
# the helper's socket directory (attachment locks, the call record) in the demo's own dir, so the
# demo leaves nothing in the machine's /run/pycni
export PYCNI_HELPER_SOCKET="$WORK/helper.sock"
PYCNI=(ip netns exec "$NODE" .venv/bin/pycni exec)
OPTS=(--cni-path "$PWD/.venv/bin" --cache-dir "$WORK/cache")

for pod in pod1 pod2; do
  ip netns add "$ID-$pod"
  echo "== pycni exec add ($pod)"
  "${PYCNI[@]}" add "$WORK/demo.conflist" "/var/run/netns/$ID-$pod" --container-id "$pod" "${OPTS[@]}" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("   ips:", ", ".join(i["address"] for i in r["ips"]))'
done

echo "== addresses in pod2"
ip netns exec "$ID-pod2" ip -br addr show dev eth0
POD2_V4=$(ip netns exec "$ID-pod2" ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
POD2_V6=$(ip netns exec "$ID-pod2" ip -6 -o addr show dev eth0 scope global | awk '{print $4}' | cut -d/ -f1)
echo "== pod1 -> pod2 ($POD2_V4, $POD2_V6)"
ip netns exec "$ID-pod1" ping -c 2 -W 2 "$POD2_V4"
ip netns exec "$ID-pod1" ping -6 -c 2 -W 2 "$POD2_V6"

echo "== pycni exec check / del"
for pod in pod1 pod2; do
  "${PYCNI[@]}" check "$WORK/demo.conflist" "/var/run/netns/$ID-$pod" --container-id "$pod" "${OPTS[@]}"
  "${PYCNI[@]}" del "$WORK/demo.conflist" "/var/run/netns/$ID-$pod" --container-id "$pod" "${OPTS[@]}"
done
if [ "${PYCNI_DEMO_PLANT:-}" = leak ]; then     # what a crash between IPAM and the veth leaves
  printf 'crashed\r\neth0' > "$WORK/ipam/demo/10.244.0.250"
fi
# reservations as DEL and GC read them (the address files; not pycni's index under .pycni-held)
left=$(.venv/bin/python -c 'import sys; from ipam.store import DiskStore
print(len(DiskStore(sys.argv[1]).holders()))' "$WORK/ipam/demo")
veths=$(ip netns exec "$NODE" ip -o link show type veth | wc -l)
echo "== after DEL: $left address reservations, $veths veths on the node"
if [ "$left" -ne 0 ] || [ "$veths" -ne 0 ]; then
  echo "== pycni inspect --check"
  ip netns exec "$NODE" .venv/bin/pycni inspect --check --conf-dir "$WORK" || true
  echo "demo FAILED: the teardown left $left reservations and $veths veths" >&2
  exit 1
fi
echo "demo OK"
