"""`pycni agent` on simulated nodes: two node namespaces on a shared underlay bridge, each with
its own pod CIDR, the agent fed the cluster's Node objects in the API's JSON (--nodes-file), pods
added with the conflist the agent wrote. Pod on node A talks to pod on node B (IPv4 and IPv6,
without masquerade); traffic leaving the cluster is masqueraded; a node's removal withdraws its
routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s_nodes import node_list, node_object

from .conftest import BIN, PREFIX, Node, _counter, ready_line, sh

APP = str(Path(__file__).with_name("netapp.py"))

NODES = {
    "node-a": {"ip4": "172.31.0.2", "ip6": "fd31::2", "pods": ["10.244.0.0/24", "fd00:10:244::/64"]},
    "node-b": {"ip4": "172.31.0.3", "ip6": "fd31::3", "pods": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
}
OUTSIDE4, OUTSIDE6 = "172.31.0.100", "fd31::100"     # a machine on the underlay, outside the cluster


def api_node(name: str) -> dict:
    n = NODES[name]
    return node_object(name, n["pods"], [n["ip4"], n["ip6"]])


class Cluster:
    def __init__(self, tmp: Path):
        base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.tmp = tmp
        self.underlay = f"{base}-u"
        self.namespaces = [self.underlay]
        sh("ip", "netns", "add", self.underlay)
        self.nodes: dict[str, Node] = {}
        self.servers: list[subprocess.Popen] = []
        u = self.underlay
        for cmd in (["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"],
                    ["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "ul0", "type", "bridge"],
                    ["ip", "addr", "add", f"{OUTSIDE4}/24", "dev", "ul0"],
                    ["ip", "-6", "addr", "add", f"{OUTSIDE6}/64", "dev", "ul0", "nodad"],
                    ["ip", "link", "set", "ul0", "up"]):
            sh(*cmd, ns=u)
        for i, (name, n) in enumerate(NODES.items()):
            ns = f"{base}-n{i}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            node = Node(ns, tmp / name)
            node.tmp.mkdir()
            self.nodes[name] = node
            sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=ns)
            sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "link", "add", f"to-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=u)
            sh("ip", "link", "set", f"to-{name}", "master", "ul0", "up", ns=u)
            sh("ip", "addr", "add", f"{n['ip4']}/24", "dev", "eth0", ns=ns)
            sh("ip", "-6", "addr", "add", f"{n['ip6']}/64", "dev", "eth0", "nodad", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)

    def agent(self, name: str, nodes: list[str]) -> str:
        """Run `pycni agent` once on node `name` with the cluster's Node objects as the API serves them."""
        node = self.nodes[name]
        listing = node.tmp / "nodes.json"
        listing.write_text(json.dumps(node_list(*map(api_node, nodes))))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env["PYCNI_LOG_FILE"] = str(node.log_file)
        proc = subprocess.run(
            ["ip", "netns", "exec", node.name, str(BIN / "pycni"), "agent", "--node-name", name,
             "--nodes-file", str(listing), "--from", "none", "--conf-dir", str(node.tmp / "net.d"),
             "--data-dir", str(node.data_dir), "--cluster-cidr", "10.244.0.0/16",
             "--cluster-cidr", "fd00:10:244::/56"],
            env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc.stdout

    def add_pod(self, name: str, cid: str) -> tuple[str, dict]:
        node = self.nodes[name]
        conflist = json.loads((node.tmp / "net.d" / "10-pycni.conflist").read_text())
        conf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        pod = node.pod()
        self.namespaces.append(pod)
        sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=pod)
        res = node.pycni("ADD", conf, pod, cid=cid)
        assert res.rc == 0, res.out
        return pod, res.out

    def serve(self, ns: str, name: str) -> None:
        srv = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, APP, "serve", name, "7000"],
                               stdout=subprocess.PIPE, text=True)
        self.servers.append(srv)
        assert ready_line(srv).strip() == "ready"

    def close(self) -> None:
        for p in self.servers:
            p.kill()
            p.wait()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def ask(ns: str, addr: str) -> str:
    return sh(sys.executable, APP, "tcp", addr, "7000", ns=ns, check=False).strip()


def addresses(result: dict) -> tuple[str, str]:
    ips = [ip["address"].split("/")[0] for ip in result["ips"]]
    return next(i for i in ips if ":" not in i), next(i for i in ips if ":" in i)


def test_pods_on_two_nodes_reach_each_other_and_removal_withdraws_routes(cluster):
    both = list(NODES)
    for name in both:
        out = cluster.agent(name, both)
        assert "conflist written, routes +2 -0" in out
    # a second sync with nothing new changes nothing
    assert "conflist unchanged, routes +0 -0" in cluster.agent("node-a", both)
    a = cluster.nodes["node-a"]
    routes_a = a.sh("ip", "route", "show", "proto", "152") + a.sh("ip", "-6", "route", "show", "proto", "152")
    assert "10.244.1.0/24 via 172.31.0.3" in routes_a and "fd00:10:244:1::/64 via fd31::3" in routes_a

    pod_a, res_a = cluster.add_pod("node-a", "pa")
    pod_b, res_b = cluster.add_pod("node-b", "pb")
    a4, a6 = addresses(res_a)
    b4, b6 = addresses(res_b)
    assert a4.startswith("10.244.0.") and b4.startswith("10.244.1.")
    assert a6.startswith("fd00:10:244::") and b6.startswith("fd00:10:244:1::")

    sh("ping", "-c1", "-W2", b4, ns=pod_a)
    sh("ping", "-6", "-c1", "-W2", b6, ns=pod_a)
    cluster.serve(pod_b, "pod-b")
    cluster.serve(cluster.underlay, "outside")
    # pod to pod across nodes keeps the pod's own source address (no masquerade)...
    assert ask(pod_a, b4) == f"pod-b {a4}"
    assert ask(pod_a, b6) == f"pod-b {a6}"
    # ...and leaving the cluster, the node's address
    assert ask(pod_a, OUTSIDE4) == "outside 172.31.0.2"
    assert ask(pod_a, OUTSIDE6) == "outside fd31::2"
    assert "podnets4" in a.sh("nft", "list", "table", "inet", "pycni-agent")

    # node-b leaves the cluster: node-a withdraws its routes, and pod-b is no longer reachable
    out = cluster.agent("node-a", ["node-a"])
    assert "routes +0 -2" in out
    assert a.sh("ip", "route", "show", "proto", "152").strip() == ""
    assert a.sh("ip", "-6", "route", "show", "proto", "152").strip() == ""
    assert ask(pod_a, b4) == ""
    # and comes back
    assert "routes +2 -0" in cluster.agent("node-a", both)
    assert ask(pod_a, b4) == f"pod-b {a4}"
