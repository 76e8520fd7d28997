"""Many workers doing ADD / CHECK / DEL for different containers on one network, at once.

    ip netns exec NODE python -m tests.robustness.concurrency_driver --workers 64 --ops 2000 \
        --pods PREFIX --data DIR [--dual-stack]

Each worker owns a pod namespace and loops ADD, CHECK, DEL with a new container id each time,
running the real `pycni` executable. Checked while running: no address is held by two live
containers; every failure is code 11 (lock wait exceeded). Prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

BIN = Path(sys.executable).parent


def conf(data: str, dual: bool, log: str) -> dict:
    ranges = [[{"subnet": "10.91.0.0/22"}]] + ([[{"subnet": "fd91::/64"}]] if dual else [])
    return {"cniVersion": "1.1.0", "name": "concnet", "type": "pycni", "bridge": "ccbr0", "isGateway": True,
            "isDefaultGateway": True, "logFile": log,
            "ipam": {"type": "pycni-ipam", "dataDir": data, "ranges": ranges, "lockTimeout": 30}}


def call(command: str, c: dict, cid: str, pod: str) -> tuple[int, dict | None]:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN),
           "PYCNI_HELPER": "0", "PYCNI_LOG_FILE": c["logFile"]}
    p = subprocess.run([str(BIN / "pycni")], input=json.dumps(c).encode(), env=env, capture_output=True)
    out = p.stdout.decode()
    return p.returncode, (json.loads(out) if out.strip() else None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--pods", required=True, help="pod namespaces are PREFIX0 .. PREFIX<workers-1>")
    ap.add_argument("--data", required=True)
    ap.add_argument("--log", default="")
    ap.add_argument("--dual-stack", action="store_true")
    args = ap.parse_args()
    c = conf(args.data, args.dual_stack, args.log)
    lock = threading.Lock()
    live: dict[str, str] = {}          # address -> container id
    counts: Counter = Counter()
    problems: list[str] = []
    remaining = [args.ops]

    def take() -> bool:
        with lock:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 3
            return True

    def worker(w: int) -> None:
        pod = f"{args.pods}{w}"
        n = 0
        while take():
            cid = f"w{w}-{n}"
            n += 1
            rc, out = call("ADD", c, cid, pod)
            counts["ADD"] += 1
            if rc != 0:
                counts[f"ADD failed code {out.get('code') if out else None}"] += 1
                if not out or out.get("code") != 11:
                    problems.append(f"ADD {cid}: {out}")
                call("DEL", c, cid, pod)
                continue
            addrs = [ip["address"].split("/")[0] for ip in out["ips"]]
            with lock:
                for a in addrs:
                    if a in live:
                        problems.append(f"{a} handed to {cid} while {live[a]} holds it")
                    live[a] = cid
            rc, chk = call("CHECK", {**c, "prevResult": out}, cid, pod)
            counts["CHECK"] += 1
            if rc != 0:
                problems.append(f"CHECK {cid}: {chk}")
            with lock:
                for a in addrs:
                    live.pop(a, None)
            rc, dele = call("DEL", {**c, "prevResult": out}, cid, pod)
            counts["DEL"] += 1
            if rc != 0:
                problems.append(f"DEL {cid}: {dele}")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    netdir = Path(args.data) / "concnet"
    leaked = [p.name for p in netdir.iterdir() if p.name[0].isdigit() or ":" in p.name] if netdir.exists() else []
    leaked += [p.name for p in netdir.iterdir() if p.name.startswith(".")] if netdir.exists() else []
    leaked += [n for n in os.listdir("/sys/class/net") if n.startswith("veth")]
    ops = counts["ADD"] + counts["CHECK"] + counts["DEL"]
    failed = sum(v for k, v in counts.items() if "failed" in k)
    print(f"concurrency: {args.workers} workers, {ops} operations ({'dual-stack' if args.dual_stack else 'IPv4'}), "
          f"failed {failed} (all code 11: {not problems}), duplicates/problems = {len(problems)}, "
          f"leaks found = {len(leaked)}")
    for p in problems[:10]:
        print("  PROBLEM", p)
    for name in leaked[:10]:
        print("  LEAK", name)
    return 1 if problems or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
