"""`pycni agent` across a router: three simulated nodes (tests/integration/routed.py), node-a and
node-b on one subnet, node-c behind a router namespace that knows no pod addresses. Per peer the
agent picks a direct route (on-link) or the VXLAN tunnel (behind the router); pods talk across
every pair with their own addresses, a 1,400-byte DF packet crosses the tunnel, the router only
ever carries node addresses as outer addresses (captured on it), on-link peers exchange plain
packets, nodes come and go, a restart rewrites nothing, IPv6 works as the underlay, and
NetworkPolicy holds across the tunnel."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time

import pytest

from tests.k8s_api import FakeAPI

from .cluster import OUTSIDE4, addresses, ask, sh
from .conftest import BIN, ready_line
from .routed import ROUTED, RoutedCluster, routed, routed6  # noqa: F401  (fixtures)

POD_NETS = [ipaddress.ip_network(n) for n in ("10.244.0.0/16", "fd00:10:244::/56")]
MODES_BY_NODE = {"node-a": "2 direct, 2 vxlan, 0 unreachable", "node-b": "2 direct, 2 vxlan, 0 unreachable",
                 "node-c": "0 direct, 4 vxlan, 0 unreachable"}


def in_pods(addr) -> bool:
    return addr is not None and any(ipaddress.ip_address(addr) in n for n in POD_NETS)


def pods_everywhere(c: RoutedCluster) -> dict[str, tuple[str, str, str]]:
    """A pod serving on every node: {node: (pod netns, IPv4, IPv6)}."""
    out = {}
    for name in ROUTED:
        pod, res = c.add_pod(name, f"p-{name}")
        c.serve(pod, f"pod-{name}")
        out[name] = (pod, *addresses(res))
    return out


def udp(ns: str, addr: str) -> str:
    from .cluster import APP

    return sh(sys.executable, APP, "udp", addr, "7000", ns=ns, check=False).strip()


def test_direct_on_link_vxlan_behind_the_router_every_pair_talks(routed):
    c = routed
    for name, out in c.sync_all().items():
        assert f"peers {MODES_BY_NODE[name]}" in out, out
    a = c.nodes["node-a"]
    routes = a.sh("ip", "route", "show", "proto", "152") + a.sh("ip", "-6", "route", "show", "proto", "152")
    assert "10.244.1.0/24 via 172.31.0.3 dev eth0" in routes                       # on-link: direct
    assert "10.244.2.0/24 via 10.244.2.0 dev pycni.vxlan" in routes and "onlink" in routes
    assert "fd00:10:244:2::/64 via fd00:10:244:2:: dev pycni.vxlan" in routes
    mac_c = c.peers("node-c")["device"]["mac"]
    assert f"{mac_c} dst 172.31.1.2 self permanent" in a.sh("bridge", "fdb", "show", "dev", "pycni.vxlan")
    assert f"10.244.2.0 lladdr {mac_c} PERMANENT" in a.sh("ip", "neigh", "show", "dev", "pycni.vxlan")
    details = a.sh("ip", "-d", "link", "show", "dev", "pycni.vxlan")
    assert "vxlan id 4242 local 172.31.0.2" in details and "dstport 4789 nolearning" in details
    assert "mtu 1450" in details
    # the pods' MTU: the uplink's 1500 less VXLAN's 50 over IPv4, since a peer needs the tunnel
    assert c.conf("node-a")["mtu"] == 1450 and c.conf("node-c")["mtu"] == 1450

    pods = pods_everywhere(c)
    router, underlay = c.capture(c.router), c.capture(c.underlay)
    for src, (ns, s4, s6) in pods.items():
        for dst, (_, d4, d6) in pods.items():
            if src == dst:
                continue
            # TCP and UDP, both families, the pod's own source address (no masquerade)
            assert ask(ns, d4) == f"pod-{dst} {s4}", (src, dst)
            assert ask(ns, d6) == f"pod-{dst} {s6}", (src, dst)
            assert udp(ns, d4) == f"pod-{dst} {s4}", (src, dst)
            assert udp(ns, d6) == f"pod-{dst} {s6}", (src, dst)
    pa, pc = pods["node-a"][0], pods["node-c"][0]
    # 1,400 bytes with DF set across the tunnel, both families; 1,451 does not leave the pod
    sh("ping", "-c1", "-W2", "-M", "do", "-s", "1372", pods["node-c"][1], ns=pa)
    sh("ping", "-6", "-c1", "-W2", "-M", "do", "-s", "1352", pods["node-c"][2], ns=pa)
    too_big = subprocess.run(["ip", "netns", "exec", pa, "ping", "-c1", "-W2", "-M", "do", "-s", "1423",
                              pods["node-c"][1]], capture_output=True, text=True)
    assert too_big.returncode != 0 and "message too long" in (too_big.stdout + too_big.stderr).lower()
    # leaving the cluster from behind the router: node-c's address, not the pod's
    c.serve(c.underlay, "outside")
    assert ask(pc, OUTSIDE4) == "outside 172.31.1.2"

    seen = router.stop()
    assert not [r for r in seen if in_pods(r[1]) or in_pods(r[2])], "pod addresses as outer addresses"
    tunnelled = {(r[1], r[2]) for r in seen if r[4] == 4789 and in_pods(r[5]) and in_pods(r[6])}
    assert ("172.31.0.2", "172.31.1.2") in tunnelled and ("172.31.1.2", "172.31.0.3") in tunnelled
    on_link = underlay.stop()
    between = {"172.31.0.2", "172.31.0.3"}
    assert not [r for r in on_link if {r[1], r[2]} == between and r[4] == 4789], "a and b encapsulate"
    plain = {(r[1], r[2]) for r in on_link if r[4] != 4789}
    assert (pods["node-a"][1], pods["node-b"][1]) in plain and (pods["node-b"][2], pods["node-a"][2]) in plain

    conf_dir = str(a.tmp / "net.d")
    out = sh(str(BIN / "pycni"), "explain", pods["node-a"][1], f"{pods['node-c'][1]}:7000", "--conf-dir",
             conf_dir, ns=a.name)
    assert "tunnel pycni.vxlan (VXLAN, VNI 4242, UDP 4789)" in out
    assert "outer source 172.31.0.2, outer destination 172.31.1.2" in out, out
    out = sh(str(BIN / "pycni"), "explain", pods["node-a"][1], f"{pods['node-b'][1]}:7000", "--conf-dir",
             conf_dir, ns=a.name)
    assert "tunnel" not in out and "via 172.31.0.3 dev eth0" in out
    table = sh(str(BIN / "pycni"), "inspect", "--conf-dir", conf_dir, "--peers-file", str(a.tmp / "peers.json"),
               ns=a.name)
    rows = {tuple(line.split()[:3]) for line in table.splitlines()}
    assert ("node-b", "10.244.1.0/24", "direct") in rows and ("node-c", "10.244.2.0/24", "vxlan") in rows
    assert "tunnel pycni.vxlan: VNI 4242, UDP 4789, outer source 172.31.0.2" in table


def test_mode_vxlan_encapsulates_on_link_peers_too_and_direct_names_the_unreachable(routed):
    c = routed
    out = c.sync_all("--mode", "vxlan")
    assert "peers 0 direct, 4 vxlan, 0 unreachable" in out["node-a"]
    pods = pods_everywhere(c)
    underlay = c.capture(c.underlay)
    assert ask(pods["node-a"][0], pods["node-b"][1]) == f"pod-node-b {pods['node-a'][1]}"
    seen = underlay.stop()
    assert not [r for r in seen if in_pods(r[1]) or in_pods(r[2])]
    assert ("172.31.0.2", "172.31.0.3") in {(r[1], r[2]) for r in seen if r[4] == 4789}

    # direct (on every node): today's host-gw; node-c is named unreachable (log and output), the
    # tunnel device goes
    out = c.sync_all("--mode", "direct")["node-a"]
    assert "peers 2 direct, 0 vxlan, 2 unreachable" in out
    assert "unreachable: node node-c 10.244.2.0/24: 172.31.1.2 is not on-link (via 172.31.0.1)" in out
    assert "UNREACHABLE" in (c.nodes["node-a"].log_file).read_text()
    a = c.nodes["node-a"]
    assert "pycni.vxlan" not in a.sh("ip", "link")
    assert "10.244.2.0/24" not in a.sh("ip", "route", "show", "proto", "152")
    assert ask(pods["node-a"][0], pods["node-c"][1]) == ""
    assert ask(pods["node-a"][0], pods["node-b"][1]) == f"pod-node-b {pods['node-a'][1]}"
    assert [p["mode"] for p in c.peers("node-a")["peers"]] == ["direct", "direct", "unreachable", "unreachable"]


def test_restart_rewrites_nothing_and_nodes_come_and_go(routed):
    c = routed
    c.sync_all()
    a = c.nodes["node-a"]
    monitor = Monitor(a.name)
    c.servers.append(monitor.proc)
    start = monitor.mark(a)                          # the monitor is listening
    out = c.agent("node-a", list(ROUTED))            # the agent again: everything is already right
    # what the agent owns: the tunnel device's links, addresses, entries and routes, and its routes
    # (the kernel's own neighbour state changes on eth0 are not the agent's)
    events = [line for line in monitor.lines[start + 1:monitor.mark(a)]
              if "pycni" in line or "proto 152" in line]
    monitor.proc.kill()
    monitor.proc.wait()
    assert "routes +0 -0" in out and "tunnel entries +0 -0" in out and "conflist unchanged" in out
    assert events == [], f"a restart rewrote: {events}"

    # node-c leaves: its route, FDB and neighbour entries go; the on-link peer stays
    out = c.agent("node-a", ["node-a", "node-b"])
    assert "routes +0 -2" in out and "tunnel entries +0 -3" in out
    assert a.sh("bridge", "fdb", "show", "dev", "pycni.vxlan").strip() == ""
    assert "PERMANENT" not in a.sh("ip", "neigh", "show", "dev", "pycni.vxlan")
    # no peer needs the tunnel: the pods' MTU is the uplink's
    assert c.conf("node-a")["mtu"] == 1500
    # node-c comes back with a new address (and a VTEP MAC annotation): the entries follow it
    c.nodes["node-c"].sh("ip", "addr", "add", "172.31.1.7/24", "dev", "eth0")
    c.moved["node-c"] = {"ip4": "172.31.1.7"}
    c.annotations["node-c"] = {"pycni.io/vtep-mac": "02:00:00:00:0c:0c"}
    out = c.agent("node-a", list(ROUTED))
    assert "routes +2 -0" in out
    fdb = a.sh("bridge", "fdb", "show", "dev", "pycni.vxlan")
    assert fdb.strip() == "02:00:00:00:0c:0c dst 172.31.1.7 self permanent", fdb
    assert c.conf("node-a")["mtu"] == 1450


def test_ipv6_underlay(routed6):
    c = routed6
    for out in c.sync_all().values():
        assert "unreachable" not in out.split("peers")[1].replace("0 unreachable", "")
    a = c.nodes["node-a"]
    details = a.sh("ip", "-d", "link", "show", "dev", "pycni.vxlan")
    assert "local fd31::2" in details and "mtu 1430" in details               # 1500 less 70 over IPv6
    assert c.conf("node-a")["mtu"] == 1430
    mac_c = c.peers("node-c")["device"]["mac"]
    assert f"{mac_c} dst fd31:1::2 self permanent" in a.sh("bridge", "fdb", "show", "dev", "pycni.vxlan")
    pods = pods_everywhere(c)
    router = c.capture(c.router)
    pa, a4, a6 = pods["node-a"]
    assert ask(pa, pods["node-c"][1]) == f"pod-node-c {a4}"
    assert ask(pa, pods["node-c"][2]) == f"pod-node-c {a6}"
    assert udp(pods["node-c"][0], pods["node-b"][1]) == f"pod-node-b {pods['node-c'][1]}"
    sh("ping", "-c1", "-W2", "-M", "do", "-s", "1372", pods["node-c"][1], ns=pa)
    seen = router.stop()
    assert not [r for r in seen if in_pods(r[1]) or in_pods(r[2])]
    assert ("fd31::2", "fd31:1::2") in {(r[1], r[2]) for r in seen if r[4] == 4789 and in_pods(r[5])}


def test_a_mode_the_kernel_lacks_fails_before_anything_is_configured(routed):
    """This kernel has no geneve: the same check the agent runs at start for VXLAN says so."""
    from cni.agent.tunnel import TunnelOptions
    from cni.agent.tunnel_host import TunnelError, require_kernel
    from cni.linux.links import open_rtnl_in

    a = c_node = routed.nodes["node-a"]
    ipr = open_rtnl_in(f"/run/netns/{c_node.name}")
    try:
        with pytest.raises(TunnelError, match="needs geneve devices and this kernel has none"):
            require_kernel(ipr, TunnelOptions("auto"), kind="geneve")
        require_kernel(ipr, TunnelOptions("auto"))          # VXLAN: there
    finally:
        ipr.close()
    assert "pycni.probe" not in a.sh("ip", "link")
    # another VXLAN device on the same VNI and port: the agent refuses to start, configures nothing
    a.sh("ip", "link", "add", "other.vx", "type", "vxlan", "id", "4242", "dstport", "4789", "local", "172.31.0.2")
    out = routed.agent("node-a", list(ROUTED), check=False)
    assert "VXLAN device other.vx already uses VNI 4242 on UDP port 4789" in out
    assert not (a.tmp / "net.d").exists() and "pycni.vxlan" not in a.sh("ip", "link")
    assert "routes" not in out
    a.sh("ip", "link", "del", "other.vx")
    # UDP 4789 held by another program: the sync stops with the reason, before the conflist
    holder = subprocess.Popen(["ip", "netns", "exec", a.name, sys.executable, "-c",
                               "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                               "s.bind(('0.0.0.0', 4789)); print('ready', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    routed.servers.append(holder)
    assert ready_line(holder).strip() == "ready"
    out = routed.agent("node-a", list(ROUTED), check=False)
    assert "cannot bring pycni.vxlan up: UDP port 4789 is in use on this node" in out, out
    assert not (a.tmp / "net.d").exists() and "pycni.vxlan" not in a.sh("ip", "link")
    holder.kill()
    holder.wait()
    assert "conflist written" in routed.agent("node-a", list(ROUTED))


# ------------------------------------------------------------------ with the API (watch, annotation)

def test_with_the_api_annotations_published_node_events_followed_and_policy_across_the_tunnel(routed):
    from .test_netpol import namespace_object, pod_object, policy

    c = routed
    api = FakeAPI(OUTSIDE4, netns=c.underlay)
    try:
        for name in ("node-a", "node-b"):
            api.put("nodes", c.api_node(name))
        api.put("namespaces", namespace_object("x"))
        kubeconfig = api.kubeconfig(c.tmp / "kubeconfig")
        agents = {name: c.start_agent(name, kubeconfig) for name in ROUTED}
        for agent in agents.values():
            agent.wait_for("agent: network policy:")
        for name in ("node-a", "node-b"):
            _wait(lambda: _annotation(api, name) == _device_mac(c, name))
        # node-c joins: its agent publishes its MAC, and the others' tunnel entries follow
        api.put("nodes", c.api_node("node-c"))
        _wait(lambda: _annotation(api, "node-c") != "")
        mac_c = _annotation(api, "node-c")
        assert mac_c == _device_mac(c, "node-c")
        a = c.nodes["node-a"]
        _wait(lambda: f"{mac_c} dst 172.31.1.2" in a.sh("bridge", "fdb", "show", "dev", "pycni.vxlan"))
        for name in ROUTED:
            agents[name].wait_for("peers", at_least=1)

        # pods: x/client on node-c (behind the router), x/server and x/other on node-a
        places = {"x/server": "node-a", "x/client": "node-c", "x/other": "node-b"}
        pods = {}
        for key, node in places.items():
            ns, name = key.split("/")
            pod, res = c.add_pod(node, f"p-{name}", k8s=(ns, name))
            ips = addresses(res)
            api.put("pods", pod_object(key, node, ips, labels={"app": name}))
            pods[key] = (pod, *ips)
        c.serve(pods["x/server"][0], "server")
        server4 = pods["x/server"][1]
        _wait(lambda: ask(pods["x/client"][0], server4) == f"server {pods['x/client'][1]}")
        # only x/other may reach x/server: the client across the tunnel is denied, the on-link one not
        api.put("networkpolicies", policy("x", "only-other", {
            "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}))
        _wait(lambda: ask(pods["x/client"][0], server4) == "")
        assert ask(pods["x/other"][0], server4) == f"server {pods['x/other'][1]}"
        # and the reverse: allowing the client (its pod address, seen inside the tunnel) lets it in
        api.put("networkpolicies", policy("x", "only-other", {
            "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}))
        _wait(lambda: ask(pods["x/client"][0], server4) == f"server {pods['x/client'][1]}")
        assert ask(pods["x/other"][0], server4) == ""

        # node-c's address changes: node-a's FDB entry follows it
        c.nodes["node-c"].sh("ip", "addr", "add", "172.31.1.9/24", "dev", "eth0")
        c.moved["node-c"] = {"ip4": "172.31.1.9"}
        moved = c.api_node("node-c")
        moved["metadata"]["annotations"] = {"pycni.io/vtep-mac": mac_c}
        api.put("nodes", moved)
        _wait(lambda: f"{mac_c} dst 172.31.1.9" in a.sh("bridge", "fdb", "show", "dev", "pycni.vxlan"))
        # node-c leaves the cluster: node-a's entries for it go
        api.delete("nodes", "", "node-c")
        # (the route goes first: an FDB entry goes only once no route leads to it)
        _wait(lambda: a.sh("bridge", "fdb", "show", "dev", "pycni.vxlan").strip() == "")
        assert "10.244.2.0/24" not in a.sh("ip", "route", "show", "proto", "152")
    finally:
        for agent in c.agents:
            agent.stop()
        api.close()


class Monitor:
    """`ip monitor` of a namespace's links, addresses, routes and neighbours, its lines collected
    by a thread; `mark` makes a change of its own and returns the index of the line that shows it
    (so what lies between two marks is everything that happened in between)."""

    def __init__(self, ns: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "ip", "monitor", "link", "address", "route",
                                      "neigh"], stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.count = 0
        threading.Thread(target=lambda: [self.lines.append(line.strip()) for line in self.proc.stdout],
                         daemon=True).start()

    def mark(self, node) -> int:
        while True:        # until the monitor shows one: it may not be listening yet
            self.count += 1
            route = f"192.0.2.{self.count}"
            node.sh("ip", "route", "add", route, "dev", "lo")
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                found = [i for i, line in enumerate(list(self.lines)) if line.startswith(route + " ")]
                if found:
                    node.sh("ip", "route", "del", route, "dev", "lo")
                    return found[0]
                time.sleep(0.02)
            node.sh("ip", "route", "del", route, "dev", "lo")
            assert self.count < 20, "ip monitor shows nothing"


def _annotation(api: FakeAPI, name: str) -> str:
    with api.cond:
        return ((api.get("nodes", "", name)["metadata"].get("annotations") or {})
                .get("pycni.io/vtep-mac", ""))


def _device_mac(c: RoutedCluster, name: str) -> str:
    info = json.loads(c.nodes[name].sh("ip", "-j", "link", "show", "dev", "pycni.vxlan"))
    return info[0]["address"]


def _wait(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)
