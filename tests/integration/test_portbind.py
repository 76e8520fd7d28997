"""A pod's bridge port speaks only for its pod (issue 28 rows 1-5), checked by attack: an attacking
pod with CAP_NET_RAW (what every test namespace has) sends what the row's attacker sends, and the
victim's server log, routes and neighbours say what got through; a control shows the same path
carries legitimate traffic. Here on a plain bridge with `portBinding` (IPv4 only, the row 1
layout); with the real agent and NetworkPolicy in test_portbind_policy.py."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Node, netconf, node, ready_line, sh  # noqa: F401  (node: the fixture)

APP = str(Path(__file__).with_name("attack_app.py"))
PORT = 7100
WAIT = 0.7          # seconds for a frame to arrive (or not)


class Pod:
    def __init__(self, node: Node, conf: dict, cid: str):
        self.node, self.conf, self.cid = node, conf, cid
        self.ns = node.pod()
        sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", ns=self.ns)
        res = node.pycni("ADD", conf, self.ns, cid=cid)
        assert res.rc == 0, res.out
        self.result = res.out
        self.ip = str(ipaddress.ip_interface(res.out["ips"][0]["address"]).ip)
        self.mac = next(i["mac"] for i in res.out["interfaces"] if i.get("sandbox"))
        self.log: Path | None = None

    def run(self, *args: str) -> str:
        return sh(sys.executable, APP, *args, ns=self.ns)

    def listen(self, servers: list) -> None:
        self.log = self.node.tmp / f"{self.cid}.log"
        srv = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, APP, "listen", str(PORT),
                                str(self.log)], stdout=subprocess.PIPE, text=True)
        servers.append(srv)
        assert ready_line(srv).strip() == "ready"

    def received(self) -> str:
        time.sleep(WAIT)
        return self.log.read_text() if self.log and self.log.exists() else ""

    def link_local(self) -> str:
        out = sh("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link", ns=self.ns)
        return out.split()[3].split("/")[0]


@pytest.fixture(params=["nftables", "iptables"])
def lan(node, request):
    """Three pods on one bridge with `portBinding`: attacker, victim, and a bystander; masquerade
    on either firewall backend (the binding is its own nftables table under both)."""
    conf = netconf(node, portBinding=True, ipMasq=True, backend=request.param)
    servers: list[subprocess.Popen] = []
    pods = {name: Pod(node, conf, f"c-{name}") for name in ("attacker", "victim", "other")}
    for p in pods.values():
        p.listen(servers)
    try:
        yield node, conf, pods
    finally:
        for s in servers:
            s.kill()
            s.wait()
        for name, p in pods.items():
            node.pycni("DEL", conf, p.ns, cid=p.cid)


def test_a_frame_must_carry_the_pods_mac_and_address(lan):
    node, conf, pods = lan
    a, v, o = pods["attacker"], pods["victim"], pods["other"]
    a.run("udp", a.ip, v.ip, v.mac, str(PORT), "honest")                   # control
    a.run("udp", o.ip, v.ip, v.mac, str(PORT), "forged-ip")
    a.run("udp", "10.88.0.200", v.ip, v.mac, str(PORT), "free-ip")
    a.run("udp", a.ip, v.ip, v.mac, str(PORT), "forged-mac", "--src-mac", o.mac)
    a.run("udp", a.ip, v.ip, v.mac, str(PORT), "vlan0", "--vlan", "0")
    a.run("udp", a.ip, v.ip, v.mac, str(PORT), "vlan5", "--vlan", "5")
    got = v.received()
    assert f"udp {a.ip} honest" in got
    leaked = [p for p in ("forged-ip", "free-ip", "forged-mac", "vlan0", "vlan5") if p in got]
    assert not leaked, got


def test_a_pod_reaches_no_pod_over_ipv6_link_local(lan):
    """IPv4-only network: fe80:: between pods is not forwarded (TCP to a server on ::, and UDP)."""
    node, conf, pods = lan
    a, v = pods["attacker"], pods["victim"]
    a.run("send", v.ip, str(PORT), "over-ipv4")                                 # control
    assert "connected" in a.run("tcp", v.ip, str(PORT), "tcp-ipv4")            # control
    assert "connected" not in a.run("tcp", f"{v.link_local()}%eth0", str(PORT), "tcp-ll")
    a.run("send", f"{v.link_local()}%eth0", str(PORT), "udp-ll")
    got = v.received()
    assert "over-ipv4" in got and "tcp-ipv4" in got
    assert "tcp-ll" not in got and "udp-ll" not in got, got
    # the pod still reaches its node over link-local (neighbour discovery works)
    bridge_ll = node.sh("ip", "-6", "-o", "addr", "show", "dev", "tbr0", "scope", "link").split()[3].split("/")[0]
    sh("ping", "-6", "-c", "1", "-W", "2", f"{bridge_ll}%eth0", ns=a.ns)


def test_broadcast_and_multicast_reach_no_pod(lan):
    node, conf, pods = lan
    a, v = pods["attacker"], pods["victim"]
    a.run("send", v.ip, str(PORT), "unicast")                                   # control
    for addr, payload in (("10.88.0.255", "subnet-bcast"), ("255.255.255.255", "bcast"),
                          ("224.0.0.1", "all-hosts"), ("ff02::1%eth0", "all-nodes6")):
        a.run("send", addr, str(PORT), payload)
    # a unicast frame to the victim's MAC whose IP destination is the subnet's broadcast
    a.run("udp", a.ip, "10.88.0.255", v.mac, str(PORT), "bcast-to-mac")
    got = v.received()
    assert "unicast" in got
    leaked = [p for p in ("subnet-bcast", "bcast", "all-hosts", "all-nodes6", "bcast-to-mac") if f" {p}\n" in got]
    assert not leaked, got


def test_no_pod_can_be_a_router_or_claim_the_gateway(lan):
    node, conf, pods = lan
    a, v = pods["attacker"], pods["victim"]
    gw = conf_gateway = "10.88.0.1"
    sh("ping", "-c", "1", "-W", "2", gw, ns=v.ns)          # the victim knows its gateway
    gw_mac = node.sh("cat", "/sys/class/net/tbr0/address").strip()
    assert gw_mac in sh("ip", "neigh", "show", conf_gateway, ns=v.ns)
    a.run("ra")
    a.run("garp", gw)
    a.run("garp", gw)
    time.sleep(WAIT)
    routes = sh("ip", "-6", "route", "show", ns=v.ns)
    assert "via fe80" not in routes and "fd66" not in routes, routes
    assert a.mac not in sh("ip", "neigh", "show", gw, ns=v.ns)
    sh("ping", "-c", "1", "-W", "2", gw, ns=v.ns)            # control: the gateway still answers
    assert v.mac not in sh("ip", "neigh", "show", gw, ns=a.ns)
    for knob, family in (("accept_ra", 6), ("accept_redirects", 6), ("accept_redirects", 4)):
        value = sh("cat", f"/proc/sys/net/ipv{family}/conf/eth0/{knob}", ns=v.ns).strip()
        assert value == "0", (knob, family, value)
    # the attacker's claim of its own address is fine: the victim learns it (control for garp)
    a.run("garp", a.ip)


def test_del_and_gc_remove_the_binding(node):
    conf = netconf(node, portBinding=True)
    one, two = Pod(node, conf, "c-one"), Pod(node, conf, "c-two")
    listing = lambda: node.sh("nft", "list", "table", "bridge", "pycni")   # noqa: E731
    assert "c-one" in listing() and "c-two" in listing()
    # DEL without prevResult finds the elements by their tag
    assert node.pycni("DEL", conf, one.ns, cid="c-one").rc == 0
    assert "c-one" not in listing() and "c-two" in listing()
    # DEL with prevResult names them
    with_prev = {**conf, "prevResult": two.result}
    three = Pod(node, conf, "c-three")
    assert node.pycni("DEL", with_prev, two.ns, cid="c-two").rc == 0
    assert "c-two" not in listing() and "c-three" in listing()
    # GC: c-three is not valid any more
    gc_conf = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}
    res = node.pycni("GC", gc_conf)
    assert res.rc == 0, res.out
    assert "c-three" not in listing()
    assert "pycni testnet/" not in listing()       # no element of any attachment left


def test_macspoofchk_alone_checks_only_the_mac(node):
    conf = netconf(node, macspoofchk=True)
    servers: list = []
    a, v, o = Pod(node, conf, "c-a"), Pod(node, conf, "c-v"), Pod(node, conf, "c-o")
    v.listen(servers)
    try:
        a.run("udp", a.ip, v.ip, v.mac, str(PORT), "honest")
        a.run("udp", a.ip, v.ip, v.mac, str(PORT), "forged-mac", "--src-mac", o.mac)
        a.run("udp", o.ip, v.ip, v.mac, str(PORT), "other-ip")      # not checked at this level
        got = v.received()
        assert "honest" in got and "other-ip" in got and "forged-mac" not in got, got
    finally:
        for s in servers:
            s.kill()
            s.wait()
