"""Rendered firewall rules, compared as golden text; option parsing; backend choice."""

import ipaddress
import sys

import pytest

from cni import firewall
from cni.errors import InvalidConfig
from cni.firewall import FirewallSpec, iptables, nft
from cni.portmap import FirewallOptions, PortMapping, parse_mappings, parse_options

IP = ipaddress.ip_interface

SPEC = FirewallSpec(
    network="net1", container_id="c1", ifname="eth0",
    pod_ips=(IP("10.88.0.2/24"), IP("fd88::2/64")),
    mappings=(PortMapping(8080, 80, "tcp"), PortMapping(5353, 53, "udp", ipaddress.ip_address("192.0.2.2"))),
    masquerade=True,
)
DN, MS = nft.chains(SPEC)
TAG = '"pycni net1/c1/eth0"'


def test_nft_attachment_golden():
    script = nft.render_add(SPEC)
    base = "\n".join(nft.render_base(0x2000)) + "\n"
    assert script.startswith(base)
    assert script[len(base):] == f"""\
add chain inet pycni {DN}
flush chain inet pycni {DN}
add rule inet pycni {DN} ip saddr {{ 10.88.0.0/24, 127.0.0.0/8 }} ct mark set ct mark | 0x2000 comment {TAG}
add rule inet pycni {DN} meta nfproto ipv4 tcp dport 8080 dnat ip to 10.88.0.2:80 comment {TAG}
add rule inet pycni {DN} ip daddr 192.0.2.2 udp dport 5353 dnat ip to 10.88.0.2:53 comment {TAG}
add rule inet pycni {DN} ip6 saddr {{ fd88::/64 }} ct mark set ct mark | 0x2000 comment {TAG}
add rule inet pycni {DN} meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd88::2]:80 comment {TAG}
add element inet pycni hostports_any {{ tcp . 8080 : goto {DN} }}
add element inet pycni hostports_ip4 {{ 192.0.2.2 . udp . 5353 : goto {DN} }}
add chain inet pycni {MS}
flush chain inet pycni {MS}
add rule inet pycni {MS} ip daddr 10.88.0.0/24 return comment {TAG}
add rule inet pycni {MS} ip daddr 224.0.0.0/4 return comment {TAG}
add rule inet pycni {MS} ip6 daddr fd88::/64 return comment {TAG}
add rule inet pycni {MS} ip6 daddr ff00::/8 return comment {TAG}
add rule inet pycni {MS} masquerade comment {TAG}
add element inet pycni masq4 {{ 10.88.0.2 : goto {MS} }}
add element inet pycni masq6 {{ fd88::2 : goto {MS} }}
"""


def test_nft_base_golden():
    assert nft.render_base(0x4000)[-3:] == [
        "add rule inet pycni postrouting ct mark & 0x4000 == 0x4000 masquerade",
        "add rule inet pycni postrouting ip saddr vmap @masq4",
        "add rule inet pycni postrouting ip6 saddr vmap @masq6",
    ]


def test_nft_delete_only_removes_its_own_elements():
    assert nft.render_delete(SPEC) == f"""\
add chain inet pycni {DN}
add element inet pycni hostports_any {{ tcp . 8080 : goto {DN} }}
delete element inet pycni hostports_any {{ tcp . 8080 }}
add element inet pycni hostports_ip4 {{ 192.0.2.2 . udp . 5353 : goto {DN} }}
delete element inet pycni hostports_ip4 {{ 192.0.2.2 . udp . 5353 }}
flush chain inet pycni {DN}
delete chain inet pycni {DN}
add chain inet pycni {MS}
add element inet pycni masq4 {{ 10.88.0.2 : goto {MS} }}
delete element inet pycni masq4 {{ 10.88.0.2 }}
add element inet pycni masq6 {{ fd88::2 : goto {MS} }}
delete element inet pycni masq6 {{ fd88::2 }}
flush chain inet pycni {MS}
delete chain inet pycni {MS}
"""


def test_nft_find_objects_in_listing():
    listing = [
        {"map": {"name": "hostports_any", "elem": [[{"concat": ["tcp", 8080]}, {"goto": {"target": DN}}],
                                                   [{"concat": ["tcp", 9090]}, {"goto": {"target": "dn-x"}}]]}},
        {"map": {"name": "masq4", "elem": [["10.88.0.2", {"goto": {"target": MS}}]]}},
        {"chain": {"name": DN}}, {"chain": {"name": "dn-x"}}, {"chain": {"name": MS}},
    ]
    elements, chains = nft.find_objects(listing, lambda n: n in (DN, MS))
    assert elements == [("hostports_any", "tcp . 8080"), ("masq4", "10.88.0.2")]
    assert chains == [DN, MS]


def test_nft_masq_all_and_conditions():
    spec = FirewallSpec("net1", "c1", "eth0", (IP("10.88.0.2/24"),), (PortMapping(80, 8080),), False,
                        FirewallOptions(masq_all=True, conditions_v4=("iifname", "eth1")))
    rules = nft.render_dnat_rules(spec, "dn")
    assert rules == [
        f"add rule inet pycni dn iifname eth1 meta nfproto ipv4 ct mark set ct mark | 0x2000 comment {TAG}",
        f"add rule inet pycni dn iifname eth1 meta nfproto ipv4 tcp dport 80 dnat ip to 10.88.0.2:8080 comment {TAG}",
    ]


def test_iptables_rules_golden():
    dn, ms = iptables.chain_names(firewall.names.attachment_hash("net1", "c1", "eth0"))
    chains, rules = iptables.plan_rules(SPEC, 4)
    assert chains == [dn, ms] and len(dn) <= 28
    c = '-m comment --comment "pycni net1/c1/eth0"'
    assert [r.text() for r in rules] == [
        f"-A {dn} -s 10.88.0.0/24 {c} -j MARK --set-xmark 0x2000/0x2000",
        f"-A {dn} -s 127.0.0.0/8 {c} -j MARK --set-xmark 0x2000/0x2000",
        f"-A {dn} -p tcp -m tcp --dport 8080 {c} -j DNAT --to-destination 10.88.0.2:80",
        f"-A PYCNI-HOSTPORTS -p tcp -m tcp --dport 8080 {c} -j {dn}",
        f"-A {dn} -d 192.0.2.2 -p udp -m udp --dport 5353 {c} -j DNAT --to-destination 10.88.0.2:53",
        f"-A PYCNI-HOSTPORTS -d 192.0.2.2 -p udp -m udp --dport 5353 {c} -j {dn}",
        f"-A {ms} -d 10.88.0.0/24 {c} -j RETURN",
        f"-A {ms} -d 224.0.0.0/4 {c} -j RETURN",
        f"-A {ms} {c} -j MASQUERADE",
        f"-A PYCNI-POSTROUTING -s 10.88.0.2 {c} -j {ms}",
    ]
    _, rules6 = iptables.plan_rules(SPEC, 6)
    assert f"-A {dn} -p tcp -m tcp --dport 8080 {c} -j DNAT --to-destination [fd88::2]:80" in \
        [r.text() for r in rules6]
    assert not any("5353" in r.text() for r in rules6)    # a v4 hostIP mapping is skipped for v6


def test_parse_mappings():
    got = parse_mappings([{"hostPort": 8080, "containerPort": 80, "protocol": "TCP"},
                          {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "0.0.0.0"},
                          {"hostPort": 8443, "containerPort": 443, "hostIP": "fd00::1"},
                          {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    assert got == (PortMapping(8080, 80, "tcp"), PortMapping(53, 53, "udp"),
                   PortMapping(8443, 443, "tcp", ipaddress.ip_address("fd00::1")))


@pytest.mark.parametrize("bad", [
    [{"hostPort": 0, "containerPort": 80}], [{"hostPort": 70000, "containerPort": 80}],
    [{"hostPort": 80, "containerPort": "80"}], [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}],
    [{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}], {"hostPort": 80}, ["x"],
])
def test_bad_mappings(bad):
    with pytest.raises(InvalidConfig):
        parse_mappings(bad)


def test_options():
    o = parse_options({"snat": False, "markMasqBit": 14, "conditionsV4": ["-s", "10.0.0.0/8"]})
    assert (o.snat, o.mark, o.conditions_v4, o.backend) == (False, 0x4000, ("-s", "10.0.0.0/8"), "auto")
    for bad in ({"markMasqBit": 32}, {"backend": "pf"}, {"conditionsV4": ["x; flush ruleset"]},
                {"conditionsV6": ['" ; drop']}, {"snat": "yes"}, {"externalSetMarkChain": "KUBE-MARK-MASQ"}):
        with pytest.raises(InvalidConfig):
            parse_options(bad)


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(firewall, "legacy_tables", lambda family=4: set())
    monkeypatch.setattr(firewall.shutil, "which", lambda name: "/usr/sbin/nft")
    assert firewall.choose(FirewallOptions()) == "nftables"
    assert firewall.choose(FirewallOptions(backend="iptables")) == "iptables"
    monkeypatch.setattr(firewall, "legacy_tables", lambda family=4: {"nat", "filter"})
    assert firewall.choose(FirewallOptions()) == "iptables"
    assert firewall.choose(FirewallOptions(backend="nftables")) == "nftables"


def test_nft_path_does_not_import_python_iptables():
    for mod in ("cni.firewall", "cni.firewall.nft"):
        __import__(mod)
    assert "iptc" not in sys.modules
