#!/usr/bin/env python3
"""Firewall work per ADD and DEL (port mapping), at 10 and at 500 pods on the node, for each pycni
backend and for the reference `portmap` plugin, inside a throwaway node namespace.

    sudo .venv/bin/python bench/firewall.py [--rounds 15] [--sizes 10,500]
    sudo .venv/bin/python bench/firewall.py --udp-ports 1000 [--rounds 3]

The second form: one attachment with that many UDP host ports, ADD and DEL in one warm process
(rules plus the UDP conntrack flush), on each backend.

Two views: the whole plugin process (pycni-portmap vs reference portmap, each exec'd as a runtime
does, chained with a prevResult), and pycni's firewall calls alone inside one warm process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
REF = Path("/usr/lib/cni/portmap")


def prev_result(i: int, netns: str) -> dict:
    ip = f"10.{60 + i // 60000}.{(i // 250) % 240}.{i % 250 + 2}/8"
    return {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns}],
            "ips": [{"address": ip, "interface": 0}], "dns": {}}


def conf(backend: str | None, i: int, netns: str) -> dict:
    c = {"cniVersion": "1.0.0", "name": "benchnet", "type": "portmap",
         "runtimeConfig": {"portMappings": [{"hostPort": 10000 + i, "containerPort": 80, "protocol": "tcp"}]},
         "prevResult": prev_result(i, netns)}
    if backend:
        c["backend"] = backend
        c["logFile"] = "/dev/null"
    return c


def run(exe: Path, command: str, c: dict, cid: str, netns: str) -> float:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN)}
    t0 = time.perf_counter()
    p = subprocess.run([str(exe)], input=json.dumps(c).encode(), env=env, capture_output=True)
    dt = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise SystemExit(f"{exe.name} {command} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return dt


def flush_all() -> None:
    """Empty every NAT table, without creating legacy tables on a node that has none (that would
    make pycni's teardown look in legacy iptables too)."""
    subprocess.run(["nft", "flush", "ruleset"], check=True)
    for tool, names in (("iptables-legacy", "/proc/net/ip_tables_names"),
                        ("ip6tables-legacy", "/proc/net/ip6_tables_names")):
        if "nat" in Path(names).read_text().split():
            subprocess.run([tool, "-t", "nat", "-F"], capture_output=True)
            subprocess.run([tool, "-t", "nat", "-X"], capture_output=True)


def exec_rows(args, netns: str, variants) -> list[tuple[str, int, float, float]]:
    rows = []
    for label, exe, backend in variants:
        for size in args.sizes:
            flush_all()
            for i in range(size):
                run(exe, "ADD", conf(backend, i, netns), f"bg{i}", netns)
            adds, dels = [], []
            for r in range(args.rounds):
                i = 50000 + r
                adds.append(run(exe, "ADD", conf(backend, i, netns), f"m{r}", netns))
                dels.append(run(exe, "DEL", conf(backend, i, netns), f"m{r}", netns))
            rows.append((label, size, statistics.median(adds), statistics.median(dels)))
            print(f"  {label:36} {size:4} pods  ADD {rows[-1][2]:7.1f} ms  DEL {rows[-1][3]:7.1f} ms",
                  flush=True)
    flush_all()
    return rows


def inprocess_rows(args, backends) -> list[tuple[str, int, float, float]]:
    import ipaddress

    from cni.firewall import rules as firewall
    from cni.firewall.options import FirewallOptions, PortMapping

    def spec(i: int, backend: str) -> firewall.FirewallSpec:
        ip = prev_result(i, "")["ips"][0]["address"]
        return firewall.FirewallSpec("benchnet", f"c{i}", "eth0", (ipaddress.ip_interface(ip),),
                                     (PortMapping(10000 + i, 80),), False, FirewallOptions(backend=backend))
    rows = []
    for backend in backends:
        for size in args.sizes:
            flush_all()
            for i in range(size):
                firewall.setup(spec(i, backend))
            adds, dels = [], []
            for r in range(args.rounds):
                s = spec(50000 + r, backend)
                t0 = time.perf_counter()
                firewall.setup(s)
                t1 = time.perf_counter()
                firewall.teardown(s)
                t2 = time.perf_counter()
                adds.append((t1 - t0) * 1000)
                dels.append((t2 - t1) * 1000)
            rows.append((f"pycni firewall calls, {backend} (warm)", size, statistics.median(adds),
                         statistics.median(dels)))
            print(f"  {rows[-1][0]:36} {size:4} pods  ADD {rows[-1][2]:7.1f} ms  DEL {rows[-1][3]:7.1f} ms",
                  flush=True)
    flush_all()
    return rows


def udp_rows(args) -> None:
    import ipaddress

    from cni.firewall import rules as firewall
    from cni.firewall.options import FirewallOptions, PortMapping

    maps = tuple(PortMapping(20000 + i, 80, "udp") for i in range(args.udp_ports))
    for i in range(args.ct_entries):      # a table the walks go through: other flows of the node
        subprocess.run(["conntrack", "-I", "-p", "udp", "-t", "600", "-s", f"10.61.{i // 250}.{i % 250 + 1}",
                        "-d", "10.62.0.1", "--sport", "5000", "--dport", "53"], capture_output=True, check=True)
    print(f"{args.udp_ports} UDP host ports on one attachment, {args.ct_entries} conntrack entries, "
          f"median of {args.rounds}, "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, kernel {os.uname().release}")
    for backend in ("nftables", "iptables"):
        flush_all()
        adds, dels = [], []
        for r in range(args.rounds):
            s = firewall.FirewallSpec("benchnet", f"u{r}", "eth0", (ipaddress.ip_interface("10.60.0.2/8"),),
                                      maps, False, FirewallOptions(backend=backend))
            t0 = time.perf_counter()
            firewall.setup(s)
            t1 = time.perf_counter()
            firewall.teardown(s)
            t2 = time.perf_counter()
            adds.append(t1 - t0)
            dels.append(t2 - t1)
        print(f"  {backend:10} ADD {statistics.median(adds) * 1000:9.1f} ms  DEL {statistics.median(dels) * 1000:9.1f} ms",
              flush=True)
    flush_all()


def inside(args) -> None:
    if args.udp_ports:
        return udp_rows(args)
    netns = f"/var/run/netns/{args.prefix}-pod"
    print(f"firewall work per ADD/DEL, median of {args.rounds}, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores, kernel {os.uname().release}")
    # nftables-only work first: once legacy iptables tables exist in the namespace they stay
    rows = exec_rows(args, netns, [("pycni-portmap, nftables", BIN / "pycni-portmap", "nftables"),
                                   ("reference portmap (iptables-nft)", REF, None)])
    rows += inprocess_rows(args, ["nftables"])
    rows += exec_rows(args, netns, [("pycni-portmap, iptables (legacy)", BIN / "pycni-portmap", "iptables")])
    rows += inprocess_rows(args, ["iptables"])
    print()
    print(f"| | {' | '.join(f'ADD @{s}' for s in args.sizes)} | {' | '.join(f'DEL @{s}' for s in args.sizes)} |")
    print("|---|" + "---|" * (2 * len(args.sizes)))
    labels = list(dict.fromkeys(r[0] for r in rows))
    for label in labels:
        mine = {r[1]: r for r in rows if r[0] == label}
        adds = " | ".join(f"{mine[s][2]:.1f} ms" for s in args.sizes)
        dels = " | ".join(f"{mine[s][3]:.1f} ms" for s in args.sizes)
        print(f"| {label} | {adds} | {dels} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sizes", default="10,500")
    ap.add_argument("--udp-ports", type=int, default=0, help="one attachment with this many UDP host ports")
    ap.add_argument("--ct-entries", type=int, default=1000, help="with --udp-ports: conntrack entries first")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=f"pycni-fwbench-{os.getpid()}")
    args = ap.parse_args()
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    if args.inside:
        return inside(args)
    node, pod = f"{args.prefix}-node", f"{args.prefix}-pod"
    try:
        for ns in (node, pod):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", node, sys.executable, __file__, "--inside", "--rounds",
                        str(args.rounds), "--sizes", ",".join(map(str, args.sizes)), "--prefix", args.prefix,
                        "--udp-ports", str(args.udp_ports), "--ct-entries", str(args.ct_entries)],
                       check=True)
    finally:
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
