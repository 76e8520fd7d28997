"""NetworkPolicy that a pod cannot get around on a shared bridge (issue 28 rows 1-4), with the real
agent: the dual-stack world of test_netpol (two nodes, namespaces x, y, z), an attacker z/a with
CAP_NET_RAW on node-a beside its victims x/a and x/c. Each case sends what the row's attacker
sends and reads the victim's server log; controls show the same path carries what policy allows.
The conflist the agent writes has `networkPolicy`, so every port is bound (no extra option)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ready_line, sh
from .test_netpol import World, policy

APP = str(Path(__file__).with_name("attack_app.py"))
PORT = 7100
WAIT = 0.8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("portbind")
    w = World(tmp)
    w.logs = {}
    try:
        for key in ("x/a", "x/c", "y/b"):       # the victims (and a bystander), on node-a
            log = tmp / f"{key.replace('/', '-')}.log"
            srv = subprocess.Popen(["ip", "netns", "exec", w.pods[key][0], sys.executable, APP, "listen",
                                    str(PORT), str(log)], stdout=subprocess.PIPE, text=True)
            w.cluster.servers.append(srv)
            assert ready_line(srv).strip() == "ready"
            w.logs[key] = log
        yield w
    finally:
        w.close()


@pytest.fixture
def w(world):
    yield world
    world.clear()


def ns_of(w, key: str) -> str:
    return w.pods[key][0]


def ip(w, key: str, family: int = 4) -> str:
    return str(next(a for a in w.pods[key][1] if a.version == family))


def mac(w, key: str) -> str:
    return sh("cat", "/sys/class/net/eth0/address", ns=ns_of(w, key)).strip()


def link_local(w, key: str) -> str:
    out = sh("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link", ns=ns_of(w, key))
    return out.split()[3].split("/")[0]


def attack(w, key: str, *args: str) -> str:
    return sh(sys.executable, APP, *args, ns=ns_of(w, key))


def received(w, key: str) -> str:
    time.sleep(WAIT)
    log = w.logs[key]
    return log.read_text() if log.exists() else ""


def test_a_forged_source_neither_escapes_egress_deny_nor_poses_as_an_allowed_peer(w):
    w.apply(policy("x", "only-from-z-c", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}},
                               "podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            policy("z", "a-says-nothing", {"podSelector": {"matchLabels": {"pod": "a"}},
                                            "policyTypes": ["Egress"]}))
    attack(w, "z/c", "send", ip(w, "x/a"), str(PORT), "from-the-peer")            # control
    attack(w, "y/b", "send", ip(w, "x/c"), str(PORT), "from-y-b")                  # control
    # z/a poses as z/c towards x/a, and as y/b (not egress-isolated) towards x/c
    attack(w, "z/a", "udp", ip(w, "z/c"), ip(w, "x/a"), mac(w, "x/a"), str(PORT), "posing-as-peer")
    attack(w, "z/a", "udp", ip(w, "y/b"), ip(w, "x/c"), mac(w, "x/c"), str(PORT), "escaping-egress")
    attack(w, "z/a", "udp", ip(w, "z/c", 6), ip(w, "x/a", 6), mac(w, "x/a"), str(PORT), "posing-as-peer6")
    to_a, to_c = received(w, "x/a"), received(w, "x/c")
    assert "from-the-peer" in to_a and "from-y-b" in to_c
    leaked = [p for p in ("posing-as-peer", "posing-as-peer6") if f" {p}\n" in to_a]
    leaked += [p for p in ("escaping-egress",) if f" {p}\n" in to_c]
    assert not leaked, (to_a, to_c)


def test_an_ingress_isolated_pod_is_reached_by_no_trick(w):
    """Rows 1, 2, 4: x/a admits nobody; link-local (TCP to the server on ::, UDP), an 802.1Q
    frame with VID 0 to its MAC, broadcast and multicast all stay out. x/c (not isolated) shows
    that the same sends of unicast traffic arrive."""
    w.apply(policy("x", "a-admits-nobody", {"podSelector": {"matchLabels": {"pod": "a"}},
                                            "policyTypes": ["Ingress"]}))
    attack(w, "z/a", "send", ip(w, "x/c"), str(PORT), "control4")
    attack(w, "z/a", "send", ip(w, "x/c", 6), str(PORT), "control6")
    attack(w, "z/a", "udp", ip(w, "z/a"), ip(w, "x/c"), mac(w, "x/c"), str(PORT), "control-raw")
    # row 1: link-local
    attack(w, "z/a", "tcp", f"{link_local(w, 'x/a')}%eth0", str(PORT), "tcp-ll")
    attack(w, "z/a", "send", f"{link_local(w, 'x/a')}%eth0", str(PORT), "udp-ll")
    attack(w, "z/a", "udp", ip(w, "z/a", 6), link_local(w, "x/a"), mac(w, "x/a"), str(PORT), "global-to-ll")
    # row 2: a priority-tagged frame
    attack(w, "z/a", "udp", ip(w, "z/a"), ip(w, "x/a"), mac(w, "x/a"), str(PORT), "vlan0", "--vlan", "0")
    # row 4: broadcast and multicast
    subnet = ipaddress.ip_interface(f"{ip(w, 'x/a')}/24").network
    for addr, payload in ((str(subnet.broadcast_address), "subnet-bcast"), ("224.0.0.1", "all-hosts"),
                          ("ff02::1%eth0", "all-nodes6")):
        attack(w, "z/a", "send", addr, str(PORT), payload)
    to_a, to_c = received(w, "x/a"), received(w, "x/c")
    assert "control4" in to_c and "control6" in to_c and "control-raw" in to_c, to_c
    leaked = [p for p in ("tcp-ll", "udp-ll", "global-to-ll", "vlan0", "subnet-bcast", "all-hosts", "all-nodes6")
              if p in to_a]
    assert not leaked, to_a


def test_no_pod_claims_the_gateway_or_advertises_a_route(w):
    """Row 5 on a dual-stack network: a neighbour advertisement and a gratuitous ARP for the
    gateway's addresses, and a router advertisement; the victim's neighbours and routes stay."""
    gw4, gw6 = "10.244.0.1", "fd00:10:244::1"
    victim = ns_of(w, "x/c")
    sh("ping", "-c", "1", "-W", "2", gw4, ns=victim)
    sh("ping", "-6", "-c", "1", "-W", "2", gw6, ns=victim)
    attacker_mac = mac(w, "z/a")
    attack(w, "z/a", "na", gw6)
    attack(w, "z/a", "garp", gw4)
    attack(w, "z/a", "ra")
    time.sleep(WAIT)
    neigh = sh("ip", "neigh", "show", ns=victim) + sh("ip", "-6", "neigh", "show", ns=victim)
    claimed = [line for line in neigh.splitlines() if attacker_mac in line and line.split()[0] in (gw4, gw6)]
    routes = sh("ip", "-6", "route", "show", ns=victim)
    assert not claimed and "fd66" not in routes and "default via fe80" not in routes, (claimed, routes)
    # control: the attacker's advertisement of its own address is taken
    attack(w, "z/a", "na", ip(w, "z/a", 6))
    sh("ping", "-6", "-c", "1", "-W", "2", gw6, ns=victim)


def test_del_unbinds_the_port_with_and_without_prev_result(w):
    """DEL on a networkPolicy network removes the binding: named from prevResult (inside the
    policy removal's transaction: x has a policy, so the new pod, unknown to the API, is in the
    pending sets), or found by its tag without one."""
    w.apply(policy("x", "isolate-x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    node = w.cluster.nodes["node-a"]
    conf = w.cluster.conf("node-a")
    listing = lambda: node.sh("nft", "list", "table", "bridge", "pycni")     # noqa: E731
    for cid, with_prev in (("cid-del-prev", True), ("cid-del-bare", False)):
        pod, result = w.cluster.add_pod("node-a", cid, ("x", cid))
        assert f"/{cid}/eth0" in listing()
        res = node.pycni("DEL", {**conf, "prevResult": result} if with_prev else conf, pod, cid=cid,
                         args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME={cid}")
        assert res.rc == 0, res.out
        assert f"/{cid}/eth0" not in listing(), (cid, listing())
