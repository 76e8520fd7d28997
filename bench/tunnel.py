#!/usr/bin/env python3
"""Pod-to-pod throughput on-link vs through the VXLAN tunnel, and the agent's time from a Node
event to a working tunnel entry.

    sudo .venv/bin/python bench/tunnel.py [--seconds 5] [--rounds 3] [--events 20]

The three simulated nodes of tests/integration/routed.py (node-a and node-b on one subnet,
node-c behind a router namespace), the agent run once on each (--nodes-file), a pod on each node.
iperf3 (TCP, one stream, --seconds each) from node-a's pod to:
    node-b's pod, direct route (on-link, no encapsulation)
    node-b's pod, --mode vxlan (the same wire, encapsulated)
    node-c's pod, VXLAN across the router
rounds alternate the rows; the median of the rounds is printed. All veth, so the numbers are the
CPU cost of each path on this machine, not a NIC's.

Then `pycni agent` on node-a follows a fake API server (tests/k8s_api.py): node-c is added and
deleted --events times; each time, the delay from the API's change to node-a's kernel having the
FDB entry, the neighbour entry and the onlink route (polled through netlink every millisecond),
and to all three being gone. p50 and max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.cluster import OUTSIDE4, addresses  # noqa: E402
from tests.integration.routed import ROUTED, RoutedCluster  # noqa: E402
from tests.k8s_api import FakeAPI  # noqa: E402


def iperf(c: RoutedCluster, client_ns: str, server_ns: str, addr: str, seconds: int) -> float:
    """Gbit/s received by the server."""
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            probe = subprocess.run(["ip", "netns", "exec", server_ns, "ss", "-ltn", "sport = :5201"],
                                   capture_output=True, text=True).stdout
            if ":5201" in probe:
                break
            time.sleep(0.05)
        out = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", addr, "-p", "5201", "-t",
                              str(seconds), "-J"], capture_output=True, text=True, timeout=seconds + 30)
        data = json.loads(out.stdout)
        return data["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait()


def throughput(tmp: Path, seconds: int, rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"on-link, direct route (node-a -> node-b)": [],
                                       "on-link, --mode vxlan (node-a -> node-b)": [],
                                       "across the router, vxlan (node-a -> node-c)": []}
    c = RoutedCluster(tmp / "throughput")
    try:
        c.sync_all()
        pods = {}
        for name in ROUTED:
            pod, res = c.add_pod(name, f"p-{name}")
            pods[name] = (pod, addresses(res)[0])
        mtu = c.conf("node-a")["mtu"]
        for _ in range(rounds):
            c.sync_all()
            results["on-link, direct route (node-a -> node-b)"].append(
                iperf(c, pods["node-a"][0], pods["node-b"][0], pods["node-b"][1], seconds))
            results["across the router, vxlan (node-a -> node-c)"].append(
                iperf(c, pods["node-a"][0], pods["node-c"][0], pods["node-c"][1], seconds))
            c.sync_all("--mode", "vxlan")
            results["on-link, --mode vxlan (node-a -> node-b)"].append(
                iperf(c, pods["node-a"][0], pods["node-b"][0], pods["node-b"][1], seconds))
        print(f"pod MTU {mtu} (the veth uplink's 1500 less VXLAN's 50); iperf3 TCP, 1 stream, {seconds} s, "
              f"median of {rounds} rounds:")
        for row, values in results.items():
            print(f"  {row:48s} {statistics.median(values):6.2f} Gbit/s   (rounds: "
                  f"{', '.join(f'{v:.2f}' for v in values)})")
    finally:
        c.close()
    return {k: statistics.median(v) for k, v in results.items()}


def event_to_entry(tmp: Path, events: int) -> None:
    from cni.linux import vxlan
    from cni.linux.links import open_rtnl_in

    c = RoutedCluster(tmp / "events")
    api = FakeAPI(OUTSIDE4, netns=c.underlay)
    try:
        for name in ("node-a", "node-b"):
            api.put("nodes", c.api_node(name))
        (tmp / "events").mkdir(exist_ok=True)
        agent = c.start_agent("node-a", api.kubeconfig(tmp / "events" / "kubeconfig"), "--no-network-policy")
        agent.wait_for("conflist written")
        ipr = open_rtnl_in(f"/run/netns/{c.nodes['node-a'].name}")
        index = ipr.link_by_name("pycni.vxlan")["index"]
        node_c = c.api_node("node-c")
        tunnel_addr = "10.244.2.0"

        def working() -> bool:
            if "172.31.1.2" not in vxlan.fdb(ipr, index).values():
                return False
            if tunnel_addr not in vxlan.neighbours(ipr, index):
                return False
            return any(r.get_attr("RTA_DST") == "10.244.2.0" and r.get_attr("RTA_OIF") == index
                       for r in ipr.routes(2))

        def wait(state: bool) -> float:
            started = time.monotonic()
            while working() != state:
                if time.monotonic() - started > 30:
                    raise SystemExit(f"bench: no {'entry' if state else 'removal'} after 30 s")
                time.sleep(0.001)
            return time.monotonic() - started

        add, remove = [], []
        for _ in range(events):
            api.put("nodes", node_c)
            add.append(wait(True))
            api.delete("nodes", "", "node-c")
            remove.append(wait(False))
        ipr.close()
        ms = lambda xs: f"p50 {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms"  # noqa: E731
        print(f"Node event -> tunnel entry on node-a (FDB, neighbour, onlink route), {events} events: "
              f"added {ms(add)}; deleted {ms(remove)}")
    finally:
        for a in c.agents:
            a.stop()
        api.close()
        c.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--events", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pycni-bench-tunnel-") as tmp:
        throughput(Path(tmp), args.seconds, args.rounds)
        event_to_entry(Path(tmp), args.events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
