#!/usr/bin/env python3
"""What DEL's look for the reference plugins' rules costs (cni.firewall.reference.teardown_nft),
in process, on a node that never ran them and on one that did.

    sudo .venv/bin/python bench/reference_lookup.py [--rounds 500]

Inside a throwaway node namespace: (1) no iptables-nft table at all (a pycni-only node); (2) an
iptables-nft `nat` table with 50 other pods' reference chains (a node that ran the reference, the
pod deleted not among them: the per-DEL cost there); (3) the same with the pod's own chains,
removed by the call (setup not timed). Prints the median and p90 per case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node_namespace import run_inside  # noqa: E402


def reference_rules(cid: str, i: int) -> str:
    """iptables-restore lines for what the reference makes for one pod (ipMasq + one host port)."""
    from cni.firewall.reference import chain_names

    masq, dnat, _ = chain_names("benchnet", cid)
    ip, note = f"10.72.{i // 250}.{i % 250 + 2}", f'"name: \\"benchnet\\" id: \\"{cid}\\""'
    return "\n".join([
        f":{masq} - [0:0]", f":{dnat} - [0:0]",
        f"-A POSTROUTING -s {ip}/32 -m comment --comment {note} -j {masq}",
        f"-A {masq} -d 10.72.0.0/16 -m comment --comment {note} -j ACCEPT",
        f"-A {masq} ! -d 224.0.0.0/4 -m comment --comment {note} -j MASQUERADE",
        f"-A {dnat} -p tcp -m tcp --dport {20000 + i} -j DNAT --to-destination {ip}:80",
        f"-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"benchnet\\\" id: \\\"{cid}\\\"\" "
        f"-m multiport --dports {20000 + i} -j {dnat}"])


def restore(lines: list[str]) -> None:
    text = "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n" + "\n".join(lines) + "\nCOMMIT\n"
    subprocess.run(["iptables-nft-restore", "--noflush"], input=text.encode(), check=True)


def measure(rounds: int, setup=None) -> tuple[float, float]:
    from cni.firewall import reference

    times = []
    for r in range(rounds):
        if setup:
            setup(r)
        t0 = time.perf_counter()
        reference.teardown_nft("benchnet", f"gone{r}")
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def run_all(args) -> None:
    rows = [("no iptables-nft table (never ran the reference)", measure(args.rounds))]
    restore([reference_rules(f"other{i}", i) for i in range(50)])
    rows.append(("nat table, 50 other pods' chains, none of this pod", measure(args.rounds)))
    rows.append(("nat table, this pod's chains removed", measure(
        min(args.rounds, 100), lambda r: restore([reference_rules(f"gone{r}", 100 + r)]))))
    print("| case | median | p90 |")
    print("|---|---|---|")
    for label, (p50, p90) in rows:
        print(f"| {label} | {p50:.3f} ms | {p90:.3f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=f"pycni-reflookup-{os.getpid()}")
    args = ap.parse_args()
    if args.inside:
        return run_all(args)
    run_inside(__file__, args.prefix, ["--rounds", str(args.rounds)])


if __name__ == "__main__":
    main()
