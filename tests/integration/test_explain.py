"""`pycni explain` against the kernel's own account: for each flow, explain's prediction of the
pycni rules a new connection's first packet matches (hook by hook, with the NAT they apply) is
compared with `nft monitor trace` of a real packet sent that way (a trace table marks it with
`meta nftrace set 1` before anything else sees it).

The node namespace has a bridge network with masquerade and a host port (8080 -> pod b:80), and
an uplink to an "outside" namespace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from pathlib import Path

from .cluster import cluster  # noqa: F401  (the fixture)
from .conftest import BIN, IP, PREFIX, _counter, netconf, node, ready_line, sh  # noqa: F401  (node: fixture)

APP = str(Path(__file__).with_name("netapp.py"))

OUT_NODE, OUT_HOST = "192.168.77.1", "192.168.77.2"
OUT_NODE6, OUT_HOST6 = "fd77::1", "fd77::2"


@pytest.fixture
def world(node):
    outside = f"{PREFIX}{os.getpid()}-{next(_counter)}-out"
    sh("ip", "netns", "add", outside)
    try:
        sh("ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside, ns=node.name)
        sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=node.name)
        sh("ip", "addr", "add", f"{OUT_NODE}/24", "dev", "up0", ns=node.name)
        sh("ip", "-6", "addr", "add", f"{OUT_NODE6}/64", "dev", "up0", "nodad", ns=node.name)
        sh("ip", "link", "set", "up0", "up", ns=node.name)
        for cmd in (["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"],
                    ["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{OUT_HOST}/24", "dev", "eth0"],
                    ["ip", "-6", "addr", "add", f"{OUT_HOST6}/64", "dev", "eth0", "nodad"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "route", "add", "default", "via", OUT_NODE],
                    ["ip", "-6", "route", "add", "default", "via", OUT_NODE6]):
            sh(*cmd, ns=outside)
        conf = netconf(node, name="xpl", ipMasq=True, backend="nftables", capabilities={"portMappings": True},
                       hairpinMode=True, ranges=[[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]])
        conf_dir = node.tmp / "net.d"
        conf_dir.mkdir()
        (conf_dir / "10-xpl.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "xpl", "plugins": [{k: v for k, v in conf.items()
                                                                if k not in ("cniVersion", "name")}]}))
        pods = {"a": node.pod(), "b": node.pod()}
        for pod in pods.values():
            sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=pod)
        ips = {}
        for name, pod in pods.items():
            c = conf if name == "a" else {**conf, "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
            res = node.pycni("ADD", c, pod, cid=f"xpl-{name}", args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME={name}")
            assert res.rc == 0, res.out
            found = [ip["address"].split("/")[0] for ip in res.out["ips"]]
            ips[name] = next(a for a in found if ":" not in a)
            ips[name + "6"] = next(a for a in found if ":" in a)
        # pod b serves on 80, so connections through the host port complete
        server = subprocess.Popen([IP, "netns", "exec", pods["b"], sys.executable, APP, "serve", "b", "80"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert ready_line(server).strip() == "ready"
            yield node, outside, pods, ips
        finally:
            server.kill()
            server.wait()
    finally:
        sh("ip", "netns", "del", outside, check=False)


def explain(node, src: str, dst: str) -> dict:
    p = subprocess.run([IP, "netns", "exec", node.name, str(BIN / "pycni"), "explain", src, dst, "--json",
                        "--conf-dir", str(node.tmp / "net.d")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def trace(node, sender_ns: str | None, daddr: str, port: int, hook: str) -> list[tuple[str, str, str]]:
    """The pycni rules the first packet of a TCP connection to daddr:port matches, as the kernel
    reports them. The packet is sent from `sender_ns` (None: the node itself)."""
    rules = (f"table inet pycnit-trace {{\n chain c {{\n  type filter hook {hook} priority -350; policy accept;\n"
             f"  {'ip6' if ':' in daddr else 'ip'} daddr {daddr} tcp dport {port} tcp flags & (syn | ack) == syn "
             f"meta nftrace set 1\n }}\n}}\n")
    subprocess.run([IP, "netns", "exec", node.name, "nft", "-f", "-"], input=rules, text=True, check=True)
    mon = subprocess.Popen([IP, "netns", "exec", node.name, "nft", "monitor", "trace"], stdout=subprocess.PIPE,
                           text=True)
    try:
        time.sleep(0.5)
        code = (f"import socket\n"
                f"try:\n    socket.create_connection(({daddr!r}, {port}), timeout=0.5)\nexcept OSError:\n    pass\n")
        cmd = [sys.executable, "-c", code]
        subprocess.run([IP, "netns", "exec", sender_ns or node.name, *cmd], timeout=10)
        time.sleep(0.5)
    finally:
        mon.terminate()
        out = mon.communicate(timeout=10)[0]
        if os.environ.get("PYCNIT_TRACE_DEBUG"):
            print(out)
        subprocess.run([IP, "netns", "exec", node.name, "nft", "delete", "table", "inet", "pycnit-trace"])
    # only this packet carries the trace flag (the trace rule takes the SYN alone: not the rest of
    # the connection, not the replies, and the connect gives up before a retransmission); its
    # trace id changes once it is routed
    seen = []
    for line in out.splitlines():
        parts = line.split(" ", 6)
        if len(parts) < 7 or parts[0] != "trace" or parts[3] != "inet":
            continue
        if parts[4] not in ("pycni", "pycni-agent", "pycni-policy"):
            continue
        rest = parts[6]
        if rest.startswith("rule "):
            text = re.sub(r"counter packets \d+ bytes \d+", "counter", rest[5:].rsplit(" (verdict", 1)[0].strip())
            seen.append((parts[4], parts[5], text))
    return seen


def predicted(e: dict) -> list[tuple[str, str, str]]:
    return [(r["table"], r["chain"], r["rule"]) for r in e["rules"]]


def test_explain_agrees_with_the_kernel_trace(world):
    node, outside, pods, ips = world
    flows = [
        # (what, src for explain, dst for explain, sender namespace, daddr, port, hook)
        ("pod to pod on one bridge", "xpl-a", f"{ips['b']}:80/tcp", pods["a"], ips["b"], 80, "prerouting"),
        ("pod to outside, masqueraded", "xpl-a", f"{OUT_HOST}:80/tcp", pods["a"], OUT_HOST, 80, "prerouting"),
        ("outside to a host port (DNAT)", OUT_HOST, f"{OUT_NODE}:8080/tcp", outside, OUT_NODE, 8080, "prerouting"),
        ("node to 127.0.0.1:hostPort", "node", "127.0.0.1:8080/tcp", None, "127.0.0.1", 8080, "output"),
        ("hairpin: a pod to its own host port", "xpl-b", f"{OUT_NODE}:8080/tcp", pods["b"], OUT_NODE, 8080,
         "prerouting"),
    ]
    for what, src, dst, sender, daddr, port, hook in flows:
        e = explain(node, src, dst)
        assert not e["unknown"], (what, e)
        node.sh("conntrack", "-F", check=False)
        kernel = trace(node, sender, daddr, port, hook)
        mine = predicted(e)
        if what.startswith("hairpin"):      # and the kernel did masquerade it: the reply goes to the bridge
            got = subprocess.run([IP, "netns", "exec", node.name, "conntrack", "-L"], capture_output=True, text=True)
            assert f"src={ips['b']} dst=10.88.0.1 sport=80" in got.stdout, got.stdout + got.stderr
        assert mine == kernel, f"{what}:\nexplain: {mine}\nkernel:  {kernel}\n" + "\n".join(e["hops"])
        if "DNAT" in what or "hostPort" in what or "hairpin" in what:
            assert any(n.startswith("DNAT") and f"{ips['b']}:80" in n for n in e["nat"]), (what, e["nat"])
        if "masquerade" in what or "hairpin" in what or "127.0.0.1" in what:
            assert "masquerade" in e["nat"], (what, e["nat"])
        if what == "pod to pod on one bridge":
            assert e["nat"] == [] and any("switched at layer 2" in h for h in e["hops"])



POLICY = """
import ipaddress, sys
from cni.agent.policy.enforce import local_view, sync
from cni.agent.policy.objects import parse_policy, parse_pod
a, b, state, role, data_dir = sys.argv[1:6]
pod = lambda name, ip, labels: parse_pod({"metadata": {"namespace": "x", "name": name, "labels": labels},
                                          "spec": {"nodeName": "n"}, "status": {"podIP": ip}})
pol = parse_policy({"metadata": {"namespace": "x", "name": "b-from-clients"}, "spec": {
    "podSelector": {"matchLabels": {"app": "b"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 80}]}]}})
labels = {"app": "a", "role": "client"} if role == "client" else {"app": "a"}
# as the agent does: the node's IPAM vouches for the API addresses of its pods (no policy records here)
sync(state, "n", [pol], [pod("a", a, labels), pod("b", b, {"app": "b"})], {"x": {}},
     mine=local_view(None, data_dir, "xpl"))
"""


def test_explain_agrees_with_the_kernel_trace_on_ipv6(world):
    node, outside, pods, ips = world
    flows = [
        ("pod to pod on one bridge", "xpl-a", f"[{ips['b6']}]:80/tcp", pods["a"], ips["b6"], 80),
        ("pod to outside, masqueraded", "xpl-a", f"[{OUT_HOST6}]:80/tcp", pods["a"], OUT_HOST6, 80),
        ("outside to a host port (DNAT)", OUT_HOST6, f"[{OUT_NODE6}]:8080/tcp", outside, OUT_NODE6, 8080),
    ]
    for what, src, dst, sender, daddr, port in flows:
        e = explain(node, src, dst)
        assert not e["unknown"], (what, e)
        node.sh("conntrack", "-F", check=False)
        kernel = trace(node, sender, daddr, port, "prerouting")
        assert predicted(e) == kernel, f"{what}:\nexplain: {predicted(e)}\nkernel:  {kernel}\n" + "\n".join(e["hops"])
        assert kernel or what.startswith("pod to pod"), what      # the NAT flows match rules
    assert any(n.startswith("DNAT") and ips["b6"] in n for n in e["nat"]), e["nat"]


def test_explain_gives_the_network_policy_verdict_the_kernel_applies(world):
    node, outside, pods, ips = world
    state = str(node.tmp / "policy")
    for role, allowed in (("none", False), ("client", True)):
        node.sh(sys.executable, "-c", POLICY, ips["a"], ips["b"], state, role, str(node.data_dir))
        e = explain(node, "xpl-a", f"{ips['b']}:80/tcp")
        assert e["verdict"] == ("delivered" if allowed else "dropped"), e["hops"]
        assert any(r["table"] == "pycni-policy" for r in e["rules"]), e["hops"]
        node.sh("conntrack", "-F", check=False)
        kernel = trace(node, pods["a"], ips["b"], 80, "prerouting")
        assert predicted(e) == kernel, f"explain: {predicted(e)}\nkernel:  {kernel}"
        answer = sh(sys.executable, APP, "tcp", ips["b"], "80", ns=pods["a"], check=False).strip()
        assert bool(answer) == allowed, answer
    node.sh("nft", "delete", "table", "inet", "pycni-policy")


def test_explain_says_a_hairpin_without_hairpin_mode_is_dropped(world):
    node, outside, pods, ips = world
    veth = explain(node, "xpl-b", f"{OUT_NODE}:8080/tcp")["hops"][0].split("node's ")[1].split(",")[0]
    node.sh("ip", "link", "set", veth, "type", "bridge_slave", "hairpin", "off")
    e = explain(node, "xpl-b", f"{OUT_NODE}:8080/tcp")
    assert e["verdict"] == "dropped" and "hairpin mode is off" in e["hops"][-1]
    assert sh(sys.executable, APP, "tcp", OUT_NODE, "8080", ns=pods["b"], check=False).strip() == ""


def test_explain_across_nodes_and_out_of_the_cluster_agrees_with_the_trace(cluster):
    """Two nodes with the agent's routes and masquerade (tests/integration/cluster.py): from a pod
    on node-a to a pod on node-b (the agent's route, no masquerade: its source stays the pod's)
    and to an address outside the cluster (the agent's masquerade, table inet pycni-agent)."""
    from .cluster import NODES, OUTSIDE4

    for name in NODES:
        cluster.agent(name, list(NODES))
    pod_a, res_a = cluster.add_pod("node-a", "pa")
    _, res_b = cluster.add_pod("node-b", "pb")
    b4 = next(ip["address"].split("/")[0] for ip in res_b["ips"] if ":" not in ip["address"])
    node = cluster.nodes["node-a"]
    for what, dst, daddr, port in (("to a pod on node-b", f"{b4}:80/tcp", b4, 80),
                                   ("out of the cluster", f"{OUTSIDE4}:80/tcp", OUTSIDE4, 80)):
        e = explain(node, "pa", dst)
        assert not e["unknown"], e
        node.sh("conntrack", "-F", check=False)
        kernel = trace(node, pod_a, daddr, port, "prerouting")
        assert predicted(e) == kernel, f"{what}:\nexplain: {predicted(e)}\nkernel:  {kernel}\n" + "\n".join(e["hops"])
        if what == "to a pod on node-b":
            assert e["nat"] == [] and any("the agent's route" in h and "via 172.31.0.3" in h for h in e["hops"])
        else:
            assert e["nat"] == ["masquerade"] and kernel[-1][0] == "pycni-agent"
