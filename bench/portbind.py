#!/usr/bin/env python3
"""Pod-to-pod throughput on one bridge (iperf3 TCP), with the port binding and without, against
the reference chain (bridge + host-local), inside a throwaway node namespace.

    sudo .venv/bin/python bench/portbind.py [--rounds 5] [--seconds 3] [--sizes 10,500]

First what a bind (ADD) and an unbind (DEL) cost in one warm process with 10 and 500 ports bound.

Three networks on three bridges of one node, two pods each: the reference `bridge` plugin,
pycni, and pycni with `"portBinding": true` (what `networkPolicy` turns on). Rounds are
interleaved so a busy machine slows every network alike; the table gives each network's median
and its ratio to the reference. br_netfilter is as the node namespace has it for all three.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
REF = Path("/usr/lib/cni")

from node_namespace import run_inside  # noqa: E402


def networks(work: Path) -> dict[str, tuple[Path, dict]]:
    common = {"cniVersion": "1.0.0", "isGateway": True, "isDefaultGateway": True}

    def pycni(name, bridge, subnet, **extra):
        return (BIN / "pycni", {**common, "name": name, "type": "pycni", "bridge": bridge,
                                "logFile": str(work / "pycni.log"), **extra,
                                "ipam": {"type": "pycni-ipam", "dataDir": str(work / "ipam"),
                                         "ranges": [[{"subnet": subnet}]]}})

    return {
        "reference": (REF / "bridge", {**common, "name": "pb-ref", "type": "bridge", "bridge": "rbr0",
                                       "ipam": {"type": "host-local", "dataDir": str(work / "ipam"),
                                                "ranges": [[{"subnet": "10.72.0.0/24"}]]}}),
        "pycni": pycni("pb-plain", "pbr0", "10.73.0.0/24"),
        "pycni portBinding": pycni("pb-bound", "bbr0", "10.74.0.0/24", portBinding=True),
    }


def cni(exe: Path, conf: dict, command: str, cid: str, netns: str) -> dict:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": f"{BIN}:{REF}"}
    p = subprocess.run([str(exe)], input=json.dumps(conf).encode(), env=env, capture_output=True)
    if p.returncode != 0:
        raise SystemExit(f"{exe.name} {command} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return json.loads(p.stdout) if p.stdout.strip() else {}


def iperf(server_ns: str, client_ns: str, addr: str, seconds: int) -> float:
    """Gbit/s of one TCP stream client -> server."""
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", addr],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            time.sleep(0.1)
            out = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", addr, "-t", str(seconds),
                                  "-J"], capture_output=True, text=True)
            if out.returncode == 0:
                return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        raise SystemExit(f"iperf3 to {addr} failed: {out.stdout[-500:]}")
    finally:
        srv.kill()
        srv.wait()


def call_cost(sizes: list[int], rounds: int) -> None:
    """ms per bind (ADD) and per unbind (DEL, named from prevResult) in one warm process, with
    `size` other ports bound already: what the binding adds to a call, without process start-up."""
    import ipaddress

    from cni.firewall import portbind

    def binding(i: int) -> portbind.Binding:
        mac = f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        ips = (ipaddress.ip_address(f"10.80.{i >> 8 & 255}.{i & 255}"), ipaddress.ip_address(f"fd80::{i >> 16:x}:{i & 0xffff:x}"))
        return portbind.Binding("pb-cost", f"c{i}", "eth0", f"vethpb{i:07d}", mac, ips)

    print("port binding per call, one warm process (median ms)")
    n = 0
    for size in sizes:
        while n < size:
            portbind.bind(binding(n))
            n += 1
        add, dele = [], []
        for r in range(rounds):
            b = binding(100000 + r)
            t0 = time.perf_counter()
            portbind.bind(b)
            t1 = time.perf_counter()
            portbind.unbind_start(b.network, b.container_id, b.ifname, b.mac, b.ips)()
            t2 = time.perf_counter()
            add.append((t1 - t0) * 1000)
            dele.append((t2 - t1) * 1000)
        print(f"  {size:5d} ports bound: bind {statistics.median(add):.2f} ms, "
              f"unbind {statistics.median(dele):.2f} ms")
    portbind.gc("pb-cost", set())


def run_all(args) -> None:
    call_cost([int(x) for x in args.sizes.split(",")], 20)
    work = Path(tempfile.mkdtemp(prefix="pycni-portbind-"))
    nets = networks(work)
    pods: dict[str, list[tuple[str, str]]] = {}
    made = []
    try:
        for label, (exe, conf) in nets.items():
            pods[label] = []
            for i in range(2):
                ns = f"{args.prefix}-{conf['name']}-{i}"
                subprocess.run(["ip", "netns", "add", ns], check=True)
                made.append((label, ns, i))
                subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
                res = cni(exe, conf, "ADD", f"{conf['name']}-{i}", f"/var/run/netns/{ns}")
                pods[label].append((ns, res["ips"][0]["address"].split("/")[0]))
        got: dict[str, list[float]] = {label: [] for label in nets}
        for _ in range(args.rounds):
            for label in nets:
                (server, addr), (client, _) = pods[label]
                got[label].append(iperf(server, client, addr, args.seconds))
        ref = statistics.median(got["reference"])
        print(f"pod-to-pod TCP, one stream, {args.rounds} rounds of {args.seconds} s (median Gbit/s)")
        for label, values in got.items():
            med = statistics.median(values)
            print(f"  {label:20s} {med:7.2f}   x{med / ref:.3f} of the reference   "
                  f"(min {min(values):.2f}, max {max(values):.2f})")
    finally:
        for label, ns, i in reversed(made):
            exe, conf = nets[label]
            try:
                cni(exe, conf, "DEL", f"{conf['name']}-{i}", f"/var/run/netns/{ns}")
            except SystemExit as e:
                print(e, file=sys.stderr)
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--sizes", default="10,500", help="ports bound already, for the per-call cost")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=f"pycni-pb-{os.getpid()}")
    args = ap.parse_args()
    if args.inside:
        return run_all(args)
    run_inside(__file__, args.prefix, ["--rounds", str(args.rounds), "--seconds", str(args.seconds),
                                        "--sizes", args.sizes])


if __name__ == "__main__":
    main()
