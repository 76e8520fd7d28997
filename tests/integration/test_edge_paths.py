"""Edge paths a review found: each test here failed before its fix (issue 12)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from .conftest import netconf, sh
from .test_portmap import BACKENDS, World, comments, dump_rules


def test_del_finishes_with_match_conditions_while_nft_is_installed(node):
    """conditionsV4 exist only on iptables; DEL tries every backend, and the nftables one used to
    refuse the config: veth, reservation and iptables rules stayed, every retry failed alike."""
    w = World(node, "iptables")
    try:
        pod, conf, res = w.add_pod("cond", [{"hostPort": 8080, "containerPort": 80}],
                                   conditionsV4=["-s", "192.0.2.0/24"])
        assert "pycni testnet/cond" in sh("iptables-legacy-save", ns=node.name)
        assert w.ask(w.client, "tcp", "192.0.2.2", 8080) == "cond 192.0.2.1"
        dele = node.pycni("DEL", {**conf, "prevResult": res}, pod, cid="cond")
        assert dele.rc == 0, dele.out
        assert node.reservations("testnet") == []
        assert not [link for link in node.links() if link.startswith("veth")]
        assert "pycni testnet" not in sh("iptables-legacy-save", ns=node.name)
    finally:
        w.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shared_host_port_survives_the_other_pods_del(node, backend):
    """Two pods map TCP 8080: the last ADD holds it on both backends (legacy iptables used to keep
    the first), and the DEL of the other must not take the holder's hairpin / 127.0.0.1 marks
    (nftables used to delete `snat_any {tcp . 8080}` by the first pod's comment)."""
    w = World(node, backend)
    try:
        m = [{"hostPort": 8080, "containerPort": 80}]
        a, conf_a, res_a = w.add_pod("a", m)
        b, conf_b, res_b = w.add_pod("b", m)
        holder = w.ask(w.client, "tcp", "192.0.2.2", 8080).split()[0]
        assert holder == "b"        # one rule on both backends: the last ADD takes the port (issue 16)
        other = {"a": ("b", b, conf_b, res_b), "b": ("a", a, conf_a, res_a)}[holder]
        # DEL the pod that does not hold the port
        cid, pod, conf, res = other
        assert node.pycni("DEL", {**conf, "prevResult": res}, pod, cid=cid).rc == 0
        holder_pod = a if holder == "a" else b
        assert w.ask(w.client, "tcp", "192.0.2.2", 8080) == f"{holder} 192.0.2.1"
        assert w.ask(node.name, "tcp", "127.0.0.1", 8080).startswith(f"{holder} ")
        assert w.ask(holder_pod, "tcp", "192.0.2.2", 8080) == f"{holder} 10.88.0.1"   # hairpin
        assert comments(dump_rules(w)) == {holder}
        # the holder's DEL frees the port; the earlier pod does not get it back (as on nftables)
        assert node.pycni("DEL", {**conf_b, "prevResult": res_b}, b, cid="b").rc == 0
        assert w.ask(w.client, "tcp", "192.0.2.2", 8080) == ""
        assert comments(dump_rules(w)) == set()
    finally:
        w.close()


def test_two_interfaces_of_one_pod_with_long_names_keep_their_own_iptables_rules(node):
    """Tags are cut at 120 characters: with a 48-character network name and a 64-character id,
    eth0 and net1 of one pod had the same tag, and the ADD of net1 removed eth0's jump rules."""
    w = World(node, "iptables")
    try:
        name = "n" * 48
        cid = "c" * 64
        pod = node.pod()
        for ifname, port, subnet in (("eth0", 8080, "10.88.0.0/24"), ("net1", 8081, "10.89.0.0/24")):
            conf = netconf(node, "1.0.0", name=name, subnet=subnet, backend="iptables",
                           bridge="tbr0" if ifname == "eth0" else "tbr1", isDefaultGateway=ifname == "eth0",
                           capabilities={"portMappings": True},
                           runtimeConfig={"portMappings": [{"hostPort": port, "containerPort": 80}]})
            add = node.pycni("ADD", conf, pod, cid=cid, ifname=ifname)
            assert add.rc == 0, add.out
        saved = sh("iptables-legacy-save", "-t", "nat", ns=node.name)
        jumps = [line for line in saved.splitlines() if line.startswith("-A PYCNI-HOSTPORTS")]
        assert len(jumps) == 2, saved
        assert {j.split("--dport ")[1].split()[0] for j in jumps} == {"8080", "8081"}
        chk = node.pycni("CHECK", {**conf, "prevResult": add.out}, pod, cid=cid, ifname="net1")
        assert chk.rc == 0, chk.out
    finally:
        w.close()


def test_the_agent_skips_one_unroutable_peer_and_keeps_the_rest(node):
    """A route whose gateway is on no connected network fails with ENETUNREACH, a netlink error:
    the agent used to catch only OSError, so later routes (and the masquerade table) never came."""
    node.sh("ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1")
    node.sh("ip", "addr", "add", "172.31.0.2/24", "dev", "under0")
    for dev in ("under0", "under1"):
        node.sh("ip", "link", "set", dev, "up")
    code = ("import ipaddress as i, json; from cni.agent import host; from cni.linux.links import open_rtnl\n"
            "want = {i.ip_network('10.244.9.0/24'): i.ip_address('10.9.9.9'),\n"
            "        i.ip_network('10.244.1.0/24'): i.ip_address('172.31.0.3')}\n"
            "ipr = open_rtnl()\n"
            "print(json.dumps(host.sync_routes(ipr, want)))\n")
    out = sh(sys.executable, "-c", code, ns=node.name)
    assert json.loads(out) == [1, 0]
    routes = node.sh("ip", "route", "show", "proto", "152")
    assert "10.244.1.0/24 via 172.31.0.3" in routes and "10.244.9.0" not in routes


def test_a_repeated_add_never_frees_the_first_adds_address(node):
    """A second ADD of a live attachment fails; its rollback must give back only what it reserved
    (it used to release the whole attachment, the live pod's address included)."""
    pod = node.pod()
    conf = netconf(node)
    first = node.pycni("ADD", conf, pod, cid="twice")
    assert first.rc == 0, first.out
    kept = node.reservations("testnet")
    # pycni once kept an index beside the address files and trusted it alone: without it the
    # second ADD got a second address, and its rollback then released both. The links ADD asks
    # now are remade from the address files when they are gone
    shutil.rmtree(node.data_dir / "testnet" / ".pycni-held")
    again = node.pycni("ADD", conf, pod, cid="twice")
    assert again.rc != 0
    assert node.reservations("testnet") == kept
    assert node.pycni("DEL", conf, pod, cid="twice").rc == 0
    assert node.reservations("testnet") == []


def test_del_releases_when_the_ipam_routes_are_not_a_list(node):
    """The fuzzer's DEL with `"routes": true` answered 999 ("'bool' object is not iterable") and
    kept the reservation: ADD now refuses such a config with code 7, and DEL, which needs only where
    the reservations live, releases."""
    pod = node.pod()
    conf = netconf(node)
    assert node.pycni("ADD", conf, pod, cid="r").rc == 0
    broken = {**conf, "ipam": {**conf["ipam"], "routes": True}}
    bad = node.pycni("ADD", broken, node.pod(), cid="r2")
    assert bad.rc != 0 and bad.code == 7 and "routes" in bad.out["details"], bad.out
    assert node.pycni("DEL", broken, pod, cid="r").rc == 0
    assert node.reservations("testnet") == []
