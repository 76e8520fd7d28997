"""Three simulated nodes on two subnets: node-a and node-b on the underlay bridge (172.31.0.0/24,
fd31::/64, as in cluster.py), node-c behind a router namespace on 172.31.1.0/24, fd31:1::/64. The
router forwards between the subnets and knows nothing of pod addresses (as a real one between
racks or zones): pods reach node-c's pods only through the tunnel. A capture on the router
(capture.py) shows what it carries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s_nodes import node_object

from .cluster import OUTSIDE4, OUTSIDE6, Cluster
from .conftest import PREFIX, Node, _counter, ready_line, sh

CAPTURE = str(Path(__file__).with_name("capture.py"))
ROUTED = {
    "node-a": {"ip4": "172.31.0.2", "ip6": "fd31::2", "pods": ["10.244.0.0/24", "fd00:10:244::/64"]},
    "node-b": {"ip4": "172.31.0.3", "ip6": "fd31::3", "pods": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
    "node-c": {"ip4": "172.31.1.2", "ip6": "fd31:1::2", "pods": ["10.244.2.0/24", "fd00:10:244:2::/64"]},
}
BEHIND_ROUTER = {"node-c"}
GW = {0: ("172.31.0.1", "fd31::1"), 1: ("172.31.1.1", "fd31:1::1")}


class RoutedCluster(Cluster):
    """`v6_underlay`: the Node objects list the IPv6 InternalIP first (the tunnel runs over IPv6)."""

    def __init__(self, tmp: Path, v6_underlay: bool = False, mtu_c: int = 1500):
        self.tmp, self.v6_underlay = tmp, v6_underlay
        self.namespaces: list[str] = []
        self.nodes: dict[str, Node] = {}
        self.servers: list[subprocess.Popen] = []
        self.agents = []
        self.annotations: dict[str, dict] = {}      # per node, set on its Node object
        self.moved: dict[str, dict] = {}            # per node, addresses that replace ROUTED's
        try:
            self._build(mtu_c)
        except BaseException:
            self.close()                # a half-built topology leaves nothing behind
            raise

    def _build(self, mtu_c: int) -> None:
        base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.underlay, self.router = f"{base}-u", f"{base}-r"
        tmp = self.tmp
        tmp.mkdir(parents=True, exist_ok=True)
        for ns in (self.underlay, self.router):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self._quiet(ns)
        u, r = self.underlay, self.router
        for cmd in (["ip", "link", "add", "ul0", "type", "bridge"],
                    ["ip", "addr", "add", f"{OUTSIDE4}/24", "dev", "ul0"],
                    ["ip", "-6", "addr", "add", f"{OUTSIDE6}/64", "dev", "ul0", "nodad"],
                    ["ip", "link", "set", "ul0", "up"],
                    ["ip", "route", "add", "172.31.1.0/24", "via", GW[0][0]],
                    ["ip", "-6", "route", "add", "fd31:1::/64", "via", GW[0][1]]):
            sh(*cmd, ns=u)
        # the router: eth0 on the underlay bridge, eth1 to node-c's subnet; forwarding, no pod routes
        sh("ip", "link", "add", "to-router", "type", "veth", "peer", "name", "eth0", "netns", r, ns=u)
        sh("ip", "link", "set", "to-router", "master", "ul0", "up", ns=u)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns=r)
        for cmd in (["ip", "addr", "add", f"{GW[0][0]}/24", "dev", "eth0"],
                    ["ip", "-6", "addr", "add", f"{GW[0][1]}/64", "dev", "eth0", "nodad"],
                    ["ip", "link", "set", "eth0", "up"]):
            sh(*cmd, ns=r)
        for i, (name, n) in enumerate(ROUTED.items()):
            ns = f"{base}-n{i}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            node = Node(ns, tmp / name)
            node.tmp.mkdir()
            self.nodes[name] = node
            self._quiet(ns)
            sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=ns)
            subnet = 1 if name in BEHIND_ROUTER else 0
            if subnet == 0:
                sh("ip", "link", "add", f"to-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=u)
                sh("ip", "link", "set", f"to-{name}", "master", "ul0", "up", ns=u)
            else:
                sh("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=r)
                for cmd in (["ip", "addr", "add", f"{GW[1][0]}/24", "dev", "eth1"],
                            ["ip", "-6", "addr", "add", f"{GW[1][1]}/64", "dev", "eth1", "nodad"],
                            ["ip", "link", "set", "eth1", "mtu", str(mtu_c), "up"]):
                    sh(*cmd, ns=r)
                sh("ip", "link", "set", "eth0", "mtu", str(mtu_c), ns=ns)
            sh("ip", "addr", "add", f"{n['ip4']}/24", "dev", "eth0", ns=ns)
            sh("ip", "-6", "addr", "add", f"{n['ip6']}/64", "dev", "eth0", "nodad", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)
            sh("ip", "route", "add", "default", "via", GW[subnet][0], ns=ns)
            sh("ip", "-6", "route", "add", "default", "via", GW[subnet][1], ns=ns)

    @staticmethod
    def _quiet(ns: str) -> None:
        sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)

    def api_node(self, name: str) -> dict:
        n = {**ROUTED[name], **self.moved.get(name, {})}
        ips = [n["ip6"], n["ip4"]] if self.v6_underlay else [n["ip4"], n["ip6"]]
        obj = node_object(name, n["pods"], ips)
        if name in self.annotations:
            obj["metadata"]["annotations"] = dict(self.annotations[name])
        return obj

    def sync_all(self, *extra: str, nodes: list[str] | None = None) -> dict[str, str]:
        nodes = nodes or list(ROUTED)
        return {name: self.agent(name, nodes, *extra) for name in nodes}

    def peers(self, name: str) -> dict:
        return json.loads((self.nodes[name].tmp / "peers.json").read_text())

    def capture(self, ns: str, port: int = 4789) -> "Capture":
        cap = Capture(ns, port)
        self.servers.append(cap.proc)      # killed by close() if the test fails before stop()
        return cap


class Capture:
    """capture.py running in namespace `ns` until `stop()`, which returns what it saw."""

    def __init__(self, ns: str, port: int):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, CAPTURE, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert ready_line(self.proc).strip() == "ready"

    def stop(self) -> list[tuple]:
        out, _ = self.proc.communicate("", timeout=30)
        return [tuple(row) for row in json.loads(out)]


@pytest.fixture
def routed(tmp_path):
    c = RoutedCluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def routed6(tmp_path):
    c = RoutedCluster(tmp_path, v6_underlay=True)
    try:
        yield c
    finally:
        c.close()
