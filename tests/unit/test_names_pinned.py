"""The names pycni derives from (network, container id, ifname), pinned as literals.

DEL and GC find what ADD made by these names alone (host veth, link alias, nft comments, iptables
chains). A change to any of them would strand every pod on a node across an upgrade: its rules and
veth would no longer be found. Change one only together with a migration, and then here."""

import ipaddress

from cni.firewall import iptables, nft
from cni.firewall.rules import FirewallSpec, network_hash
from cni.spec import names

NET, CID, IFNAME = "podnet", "abc123", "eth0"


def test_host_veth_name_and_alias():
    assert names.host_veth_name(NET, CID, IFNAME) == "veth0f14610d0a0"
    assert names.attachment_alias(NET, CID, IFNAME) == "pycni/podnet/abc123/eth0"
    assert names.attachment_hash(NET, CID, IFNAME) == \
        "0f14610d0a01daeec5a32d44d9b0d1e85c6290a32007a0181b5e1f977f9c0cfd"


def test_firewall_names():
    spec = FirewallSpec(NET, CID, IFNAME, (ipaddress.ip_interface("10.244.1.5/24"),))
    assert network_hash(NET) == "3aa0627f"
    assert spec.tag == "pycni podnet/abc123/eth0"
    assert nft.tag(spec) == "3aa0627f-0f14610d0a01daee pycni podnet/abc123/eth0"
    assert nft.TABLE == "inet pycni"
    assert iptables.chain_names(names.attachment_hash(NET, CID, IFNAME)) == \
        ("PYCNI-DN-0f14610d0a01daeec5a", "PYCNI-MS-0f14610d0a01daeec5a")
    assert (iptables.HOSTPORTS, iptables.POSTROUTING) == ("PYCNI-HOSTPORTS", "PYCNI-POSTROUTING")


def test_long_names_are_cut_where_they_always_were():
    spec = FirewallSpec("n" * 48, "c" * 64, "net1")
    assert spec.tag == ("pycni " + "n" * 48 + "/" + "c" * 64 + "/")[:120]
    assert len(nft.tag(spec)) == 127
