#!/usr/bin/env python3
"""ADD and DEL latency of `pycni` vs the reference `bridge` + `host-local`, one plugin exec per call
(as a runtime runs them), inside throwaway namespaces. Prints p50/p95 and the ratio.

    sudo .venv/bin/python bench/latency.py [--pods 50]

It creates a node namespace, re-runs itself inside it (so the plugins see the node as the host),
creates pod namespaces beside it, and removes all of them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REF = Path("/usr/lib/cni")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def call(exe: Path, command: str, conf: dict, netns: str, cid: str) -> float:
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": f"{BIN}:{REF}",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe)], input=json.dumps(conf).encode(), env=env, capture_output=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{exe.name} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return dt * 1000


def inside(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="pycni-bench-"))
    pods = [f"{args.prefix}-p{i}" for i in range(args.pods)]
    rows = []
    variants = [
        ("pycni (bridge + pycni-ipam in process)", BIN / "pycni", "pycni", "pycni-ipam", "pbr0", "10.61.0.0/16"),
        ("reference bridge + host-local", REF / "bridge", "bridge", "host-local", "rbr0", "10.62.0.0/16"),
    ]
    for label, exe, typ, ipam, br, subnet in variants:
        conf = {"cniVersion": "1.0.0", "name": f"bench-{typ}", "type": typ, "bridge": br,
                "isGateway": True, "isDefaultGateway": True, "logFile": str(work / "pycni.log"),
                "ipam": {"type": ipam, "dataDir": str(work / "ipam"), "ranges": [[{"subnet": subnet}]]}}
        adds, dels = [], []
        for i, pod in enumerate(pods):
            adds.append(call(exe, "ADD", conf, f"/var/run/netns/{pod}", f"{typ}-{i}"))
        for i, pod in enumerate(pods):
            dels.append(call(exe, "DEL", conf, f"/var/run/netns/{pod}", f"{typ}-{i}"))
        rows.append((label, adds, dels))
    print(f"{args.pods} pods, sequential, one exec per call, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores, kernel {os.uname().release}")
    print(f"{'':42} {'ADD p50':>8} {'ADD p95':>8} {'DEL p50':>8} {'DEL p95':>8}   (ms)")
    for label, adds, dels in rows:
        print(f"{label:42} {statistics.median(adds):8.1f} {pct(adds, 95):8.1f} "
              f"{statistics.median(dels):8.1f} {pct(dels, 95):8.1f}")
    (_, a0, d0), (_, a1, d1) = rows
    print(f"{'ratio pycni / reference':42} {statistics.median(a0) / statistics.median(a1):8.2f} "
          f"{pct(a0, 95) / pct(a1, 95):8.2f} {statistics.median(d0) / statistics.median(d1):8.2f} "
          f"{pct(d0, 95) / pct(d1, 95):8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=f"pycni-bench-{os.getpid()}")
    args = ap.parse_args()
    if args.inside:
        return inside(args)
    node = f"{args.prefix}-node"
    pods = [f"{args.prefix}-p{i}" for i in range(args.pods)]
    try:
        for ns in [node, *pods]:
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", node, sys.executable, __file__, "--inside",
                        "--pods", str(args.pods), "--prefix", args.prefix], check=True)
    finally:
        for ns in [*pods, node]:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
