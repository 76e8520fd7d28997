"""Rendered firewall rules, compared as golden text; option parsing; backend choice."""

import ipaddress
import sys

import pytest

from cni.firewall import rules as firewall
from cni.spec.errors import InvalidConfig, UnsupportedField
from cni.firewall.rules import FirewallSpec
from cni.firewall import iptables, nft
from cni.firewall.options import FirewallOptions, PortMapping, parse_mappings, parse_options

IP = ipaddress.ip_interface

SPEC = FirewallSpec(
    network="net1", container_id="c1", ifname="eth0",
    pod_ips=(IP("10.88.0.2/24"), IP("fd88::2/64")),
    mappings=(PortMapping(8080, 80, "tcp"), PortMapping(5353, 53, "udp", ipaddress.ip_address("192.0.2.2"))),
    masquerade=True,
)
TAG = f'"{SPEC.net_hash}-{SPEC.att_hash} pycni net1/c1/eth0"'


def test_nft_add_is_elements_only_golden():
    assert nft.render_add(SPEC) == f"""\
add element inet pycni base_v1_2000 {{ 0 }}
add element inet pycni hostports4 {{ tcp . 8080 comment {TAG} : 10.88.0.2 . 80 }}
add element inet pycni snat_any {{ tcp . 8080 comment {TAG} }}
add element inet pycni hostip4 {{ 192.0.2.2 . udp . 5353 comment {TAG} : 10.88.0.2 . 53 }}
add element inet pycni snat_ip4 {{ 192.0.2.2 . udp . 5353 comment {TAG} }}
add element inet pycni hairpin_src4 {{ 10.88.0.0/24 }}
add element inet pycni masq4 {{ 10.88.0.2 comment {TAG} }}
add element inet pycni podnets4 {{ 10.88.0.0/24 }}
add element inet pycni hostports6 {{ tcp . 8080 comment {TAG} : fd88::2 . 80 }}
add element inet pycni hairpin_src6 {{ fd88::/64 }}
add element inet pycni masq6 {{ fd88::2 comment {TAG} }}
add element inet pycni podnets6 {{ fd88::/64 }}
"""


def test_nft_base_golden():
    base = nft.render_base(0x4000)
    assert "add rule inet pycni prerouting fib daddr type local jump hostports" in base
    assert base[-4:] == [
        "flush chain inet pycni postrouting",
        "add rule inet pycni postrouting ct mark & 0x4000 == 0x4000 masquerade",
        "add rule inet pycni postrouting ip saddr @masq4 ip daddr != @podnets4 ip daddr != 224.0.0.0/4 masquerade",
        "add rule inet pycni postrouting ip6 saddr @masq6 ip6 daddr != @podnets6 ip6 daddr != ff00::/8 masquerade",
    ]
    assert "add rule inet pycni hostports ip saddr @hairpin_src4 meta l4proto . th dport @snat_any " \
           "ct mark set ct mark | 0x4000" in base
    assert "add rule inet pycni hostports dnat ip to ip daddr . meta l4proto . th dport map @hostip4" in base


def test_nft_delete_guards_map_elements_and_keeps_shared_ones():
    script = nft.render_delete(SPEC)
    assert script.splitlines()[:4] == [
        f"add element inet pycni hostports4 {{ tcp . 8080 comment {TAG} : 10.88.0.2 . 80 }}",
        "delete element inet pycni hostports4 { tcp . 8080 }",
        f"add element inet pycni snat_any {{ tcp . 8080 comment {TAG} }}",
        "delete element inet pycni snat_any { tcp . 8080 }",
    ]
    assert "podnets4" not in script and "hairpin_src4" not in script


def test_nft_tagged_elements_from_listing():
    listing = [
        {"map": {"name": "hostports4", "elem": [
            [{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "aa-bb pycni n/c/e"}}, {"concat": ["10.0.0.2", 80]}]]}},
        {"set": {"name": "podnets4", "elem": [{"prefix": {"addr": "10.88.0.0", "len": 24}}]}},
        {"set": {"name": "masq4", "elem": [{"elem": {"val": "10.0.0.2", "comment": "aa-bb x"}}]}},
        {"set": {"name": "foreign", "elem": ["1.2.3.4"]}},
    ]
    assert nft.tagged_elements(listing) == [
        ("hostports4", "tcp . 8080", "10.0.0.2 . 80", "aa-bb pycni n/c/e"),
        ("podnets4", "10.88.0.0/24", "", ""),
        ("masq4", "10.0.0.2", "", "aa-bb x"),
    ]


def test_nft_masq_all_and_conditions():
    spec = FirewallSpec("net1", "c1", "eth0", (IP("10.88.0.2/24"),), (PortMapping(80, 8080),), False,
                        FirewallOptions(masq_all=True))
    assert [e[0] for e in nft.elements(spec)] == ["hostports4", "masqall_any", "hairpin_src4"]
    conditioned = FirewallSpec("net1", "c1", "eth0", (IP("10.88.0.2/24"),), (PortMapping(80, 8080),), False,
                               FirewallOptions(conditions_v4=("-i", "eth1")))
    with pytest.raises(UnsupportedField):
        nft.refuse_conditions(conditioned)      # ADD and CHECK on nftables refuse them...
    assert "delete element" in nft.render_delete(conditioned)   # ...a teardown never does


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
    monkeypatch.setattr(firewall, "_on_path", lambda name: name == "nft")
    assert firewall.choose(FirewallOptions()) == "nftables"
    assert firewall.choose(FirewallOptions(backend="iptables")) == "iptables"
    monkeypatch.setattr(firewall, "legacy_tables", lambda family=4: {"nat", "filter"})
    assert firewall.choose(FirewallOptions()) == "iptables"
    assert firewall.choose(FirewallOptions(backend="nftables")) == "nftables"


def test_nft_path_does_not_import_python_iptables():  # the real check runs the executable
    for mod in ("cni.firewall", "cni.firewall.nft"):
        __import__(mod)
    assert "iptc" not in sys.modules


def test_on_path_finds_programs_as_which_does(tmp_path, monkeypatch):
    exe = tmp_path / "nft"
    exe.write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", f"/nonexistent:{tmp_path}")
    assert not firewall._on_path("nft")          # not executable yet
    exe.chmod(0o755)
    assert firewall._on_path("nft") and not firewall._on_path("iptables-nope")
