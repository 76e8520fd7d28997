"""NetworkPolicy under concurrency: workers ADD and DEL pods while an "agent" thread re-syncs the
policy table as fast as it can, both through the state directory's lock.

    ip netns exec NODE python -m tests.robustness.policy_driver --workers 8 --ops 60 --pods PREFIX --dir DIR

Every pod is x/p<worker> and selected by a deny-ingress policy, so from the moment its ADD
returns its address must be in `ingress_iso4` (a pod that is not there is reachable by anyone:
the race fails open), whatever the agent's sync did meanwhile; after its DEL, in no set (a reused
address would inherit its verdicts). The agent's pods carry `status.podIPs` as the API would: the
address of the pod's last ADD once it returned, kept after its DEL (a terminating Pod keeps it
until the object is removed), so a sync after a DEL must not put it back. Checked after every call against the kernel's listing; at the
end: no record, no element of any pod. Prints one summary line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def elements(set_name: str) -> set[str]:
    p = subprocess.run(["nft", "-j", "list", "set", "inet", "pycni-policy", set_name], capture_output=True, text=True)
    if p.returncode != 0:
        return set()
    for obj in json.loads(p.stdout)["nftables"]:
        if "set" in obj:
            return {str(e) for e in obj["set"].get("elem") or ()}
    return set()


def all_elements() -> str:
    return subprocess.run(["nft", "list", "table", "inet", "pycni-policy"], capture_output=True, text=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--ops", type=int, default=60)
    ap.add_argument("--pods", required=True)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    from cni.agent.policy.enforce import sync
    from cni.agent.policy.objects import parse_policy, parse_pod

    work = Path(args.dir)
    state = str(work / "policy")
    conf = {"cniVersion": "1.0.0", "name": "polnet", "type": "pycni", "bridge": "pbr0", "isGateway": True,
            "networkPolicy": state, "logFile": str(work / "pycni.log"),
            "ipam": {"type": "pycni-ipam", "dataDir": str(work / "ipam"), "ranges": [[{"subnet": "10.93.0.0/22"}]]}}
    policy = parse_policy({"metadata": {"namespace": "x", "name": "deny"},
                           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    def pod(w: int, ip: str | None = None):
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]} if ip else {"phase": "Pending"}
        return parse_pod({"metadata": {"namespace": "x", "name": f"p{w}"}, "spec": {"nodeName": "n"},
                          "status": status})

    pods = [pod(w) for w in range(args.workers)]     # the agent thread reads the list as it is
    sync(state, "n", [policy], pods, {"x": {}})          # the agent's first sync: the table exists
    stop = threading.Event()
    syncs = [0]
    problems: list[str] = []

    def agent() -> None:
        while not stop.is_set():
            try:
                sync(state, "n", [policy], pods, {"x": {}})
                syncs[0] += 1
            except Exception as e:
                problems.append(f"sync: {e}")

    def call(command: str, w: int, cid: str) -> dict | None:
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_NETNS": f"/var/run/netns/{args.pods}{w}", "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=p{w}",
               "PYCNI_HELPER_SOCKET": str(work / "helper.sock")}
        p = subprocess.run([str(BIN / "pycni")], input=json.dumps(conf).encode(), env=env, capture_output=True)
        if p.returncode != 0:
            problems.append(f"{command} {cid}: {p.stdout.decode()[:300]}")
            return None
        return json.loads(p.stdout) if p.stdout.strip() else {}

    counts = {"ADD": 0, "DEL": 0, "open after ADD": 0, "left after DEL": 0}
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(args.ops // 2):
            cid = f"pol-{w}-{i}"
            res = call("ADD", w, cid)
            if res is None:
                continue
            ip = res["ips"][0]["address"].split("/")[0]
            pods[w] = pod(w, ip)            # the kubelet published it; it stays after the DEL
            isolated = ip in elements("ingress_iso4")
            if call("DEL", w, cid) is None:
                continue
            for _ in range(2):              # at least one whole agent sync after the DEL
                seen = syncs[0]
                while syncs[0] == seen and not stop.is_set():
                    time.sleep(0.005)
            left = ip in all_elements()
            with lock:
                counts["ADD"] += 1
                counts["DEL"] += 1
                counts["open after ADD"] += not isolated
                counts["left after DEL"] += left

    agent_thread = threading.Thread(target=agent)
    agent_thread.start()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    agent_thread.join()
    sync(state, "n", [policy], pods, {"x": {}})
    records = os.listdir(os.path.join(state, "attachments")) if os.path.isdir(os.path.join(state, "attachments")) else []
    leftover = sorted(elements("ingress_iso4") | elements("pending4"))
    print(f"policy concurrency: {args.workers} workers, {counts['ADD']} ADD/DEL pairs in "
          f"{time.monotonic() - started:.1f} s beside {syncs[0]} agent syncs, pods open after their ADD = "
          f"{counts['open after ADD']}, addresses left in sets after DEL = {counts['left after DEL']}, "
          f"records left = {len(records)}, elements left = {len(leftover)}, failed calls = {len(problems)}")
    for p in problems[:10]:
        print("  problem:", p)
    ok = not problems and counts["ADD"] > 0 and not counts["open after ADD"] and not counts["left after DEL"] \
        and not records and not leftover
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
