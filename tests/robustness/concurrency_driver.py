"""Many workers doing ADD / CHECK / DEL for different containers on one network, at once.

    ip netns exec NODE python -m tests.robustness.concurrency_driver --workers 64 --ops 2000 \
        --pods PREFIX --data DIR [--dual-stack] [--backend nftables|iptables]

Each worker owns a pod namespace and loops ADD, CHECK, DEL with a new container id each time,
running the real `pycni` executable, with masquerade and a TCP and a UDP host port of its own.
Checked while running: no address is held by two containers (an address counts as held from its
ADD until its DEL has returned); every failure is code 11 (lock wait exceeded), and those stay
under MAX_BUSY_SHARE of the calls; a DEL that answered code 11 is retried, as a runtime does. Checked at the end: no reservation, veth or firewall rule left.
Prints one summary line.
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
MAX_BUSY_SHARE = 0.05      # code 11 answers tolerated, as a share of ADDs


def conf(data: str, dual: bool, log: str, backend: str) -> dict:
    ranges = [[{"subnet": "10.91.0.0/22"}]] + ([[{"subnet": "fd91::/64"}]] if dual else [])
    return {"cniVersion": "1.1.0", "name": "concnet", "type": "pycni", "bridge": "ccbr0", "isGateway": True,
            "isDefaultGateway": True, "logFile": log, "ipMasq": True, "backend": backend,
            "capabilities": {"portMappings": True},
            "ipam": {"type": "pycni-ipam", "dataDir": data, "ranges": ranges, "lockTimeout": 30}}


def with_ports(c: dict, worker: int) -> dict:
    return {**c, "runtimeConfig": {"portMappings": [
        {"hostPort": 20000 + worker, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 20000 + worker, "containerPort": 80, "protocol": "udp"}]}}


def firewall_leftovers(backend: str) -> list[str]:
    if backend == "nftables":
        text = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, timeout=60).stdout
    else:
        text = "".join(subprocess.run([tool], capture_output=True, text=True, timeout=60).stdout
                       for tool in ("iptables-legacy-save", "ip6tables-legacy-save"))
    return [line.strip() for line in text.splitlines() if "pycni concnet/" in line]


def call(command: str, c: dict, cid: str, pod: str) -> tuple[int, dict | None]:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN),
           "PYCNI_HELPER": "0", "PYCNI_LOG_FILE": c["logFile"],
           "PYCNI_HELPER_SOCKET": os.path.join(os.path.dirname(c["logFile"]), "helper.sock")}
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
    ap.add_argument("--backend", default="nftables", choices=["nftables", "iptables"])
    args = ap.parse_args()
    base = conf(args.data, args.dual_stack, args.log, args.backend)
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

    def busy_or_problem(verb: str, cid: str, out: dict | None) -> None:
        if out and out.get("code") == 11:
            counts[f"{verb} failed code 11"] += 1
        else:
            problems.append(f"{verb} {cid}: {out}")

    def worker(w: int) -> None:
        pod = f"{args.pods}{w}"
        c = with_ports(base, w)
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
                busy_or_problem("CHECK", cid, chk)
            for _ in range(3):          # a runtime retries a DEL that answered "try again"
                rc, dele = call("DEL", {**c, "prevResult": out}, cid, pod)
                counts["DEL"] += 1
                if rc == 0:
                    break
                busy_or_problem("DEL", cid, dele)
            with lock:                  # held until its DEL has returned, not a moment less
                for a in addrs:
                    live.pop(a, None)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    netdir = Path(args.data) / "concnet"
    leaked = [p.name for p in netdir.iterdir() if p.name[0].isdigit() or ":" in p.name] if netdir.exists() else []
    leaked += [p.name for p in netdir.iterdir() if p.name.startswith(".") and p.name != ".pycni-held"] \
        if netdir.exists() else []
    index = netdir / ".pycni-held"      # every attachment DEL'ed: no link may be left
    leaked += [f".pycni-held/{p.name}" for p in index.iterdir() if p.name != "complete"] if index.exists() else []
    leaked += [n for n in os.listdir("/sys/class/net") if n.startswith("veth")]
    leaked += firewall_leftovers(args.backend)
    ops = counts["ADD"] + counts["CHECK"] + counts["DEL"]
    busy = sum(counts[f"{verb} failed code 11"] for verb in ("ADD", "CHECK", "DEL"))
    if busy > MAX_BUSY_SHARE * max(ops, 1):
        problems.append(f"{busy} of {ops} calls answered code 11 (more than {MAX_BUSY_SHARE:.0%})")
    print(f"concurrency ({args.backend}, {'dual-stack' if args.dual_stack else 'IPv4'}): {args.workers} workers, "
          f"{ops} operations, {busy} answered code 11 (try again), other problems and duplicates = "
          f"{len(problems)}, leaks found = {len(leaked)}")
    for p in problems[:10]:
        print("  PROBLEM", p)
    for name in leaked[:10]:
        print("  LEAK", name)
    return 1 if problems or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
