import ipaddress

import pytest

from cni.bridge import config
from cni.spec import names
from cni.spec.errors import InvalidConfig
from cni.bridge.plan import Plan, plan_add
from cni.spec.result import IPConfig, Result, Route

BASE = {"cniVersion": "1.0.0", "name": "net1", "type": "pycni"}


def test_defaults_match_reference_bridge():
    c = config.parse(BASE)
    assert (c.bridge, c.is_gateway, c.is_default_gateway, c.mtu, c.ipam_type) == ("cni0", False, False, None, "")


def test_default_gateway_implies_gateway():
    assert config.parse({**BASE, "isDefaultGateway": True}).is_gateway


@pytest.mark.parametrize("extra, words", [
    ({"hairpinMode": True, "promiscMode": True}, "hairpin"),
    ({"mtu": 10}, "mtu"),
    ({"mtu": "1500"}, "mtu"),
    ({"vlan": 5000}, "vlan"),
    ({"isGateway": "yes"}, "isGateway"),
    ({"bridge": "br/0"}, "bridge"),
    ({"bridge": "a-bridge-name-too-long"}, "bridge"),
    ({"ipam": []}, "ipam"),
    ({"ipam": {"subnet": "10.0.0.0/24"}}, "type"),
    ({"ipMasqBackend": "pf"}, "ipMasqBackend"),
    ({"runtimeConfig": {"mac": "zz:zz"}}, "MAC"),
    ({"runtimeConfig": {"mac": "02:00:00:00:00:01\n"}}, "MAC"),   # `$` accepted a final newline
    ({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}, "multicast"),
])
def test_invalid_options(extra, words):
    with pytest.raises(InvalidConfig) as e:
        config.parse({**BASE, **extra})
    assert words in str(e.value)


@pytest.mark.parametrize("extra, backend", [
    ({}, "auto"), ({"ipMasqBackend": "auto"}, "auto"), ({"ipMasqBackend": "nftables"}, "nftables"),
    ({"ipMasqBackend": "iptables"}, "iptables"), ({"backend": "iptables", "ipMasqBackend": "nftables"}, "iptables"),
])
def test_firewall_backend_one_validation_for_both_spellings(extra, backend):
    """`auto` is documented for ipMasqBackend; the bridge config once rejected it (two validators)."""
    assert config.parse({**BASE, **extra}).firewall.backend == backend


def test_mac_precedence():
    conf = {**BASE, "runtimeConfig": {"mac": "02:00:00:00:00:01"}, "args": {"cni": {"mac": "02:00:00:00:00:02"}}}
    assert config.parse(conf, {"MAC": "02:00:00:00:00:03"}).mac == "02:00:00:00:00:01"
    del conf["runtimeConfig"]
    assert config.parse(conf, {"MAC": "02:00:00:00:00:03"}).mac == "02:00:00:00:00:02"
    assert config.parse(BASE, {"MAC": "02:00:00:00:00:0A"}).mac == "02:00:00:00:00:0a"


def test_host_veth_name_is_stable_and_short():
    a = names.host_veth_name("net1", "c1", "eth0")
    assert a == names.host_veth_name("net1", "c1", "eth0") != names.host_veth_name("net1", "c1", "eth1")
    assert len(a) == 15 and a.startswith("veth")
    alias = names.attachment_alias("net1", "c1", "eth0")
    assert names.alias_attachment_hash(alias, "net1") == names.attachment_hash("net1", "c1", "eth0")
    assert names.alias_attachment_hash("something else", "net1") is None


def test_plan_for_default_gateway_dual_stack():
    conf = config.parse({**BASE, "isDefaultGateway": True, "mtu": 1400, "hairpinMode": True,
                         "ipam": {"type": "pycni-ipam"}})
    ipam = Result(
        ips=(IPConfig(ipaddress.ip_interface("10.1.0.2/24"), ipaddress.ip_address("10.1.0.1")),
             IPConfig(ipaddress.ip_interface("fd00::2/64"), ipaddress.ip_address("fd00::1"))),
        routes=(Route(ipaddress.ip_network("192.168.0.0/16")),),
    )
    plan = plan_add(conf, "c1", "/var/run/netns/p", "eth0", ipam)
    assert plan == Plan(
        bridge="cni0",
        bridge_addresses=(ipaddress.ip_interface("10.1.0.1/24"), ipaddress.ip_interface("fd00::1/64")),
        force_address=False, promisc=False, mtu=1400,
        host_veth=names.host_veth_name("net1", "c1", "eth0"),
        host_alias="pycni/net1/c1/eth0",
        hairpin=True, vlan=None, netns="/var/run/netns/p", ifname="eth0", mac="",
        addresses=(ipaddress.ip_interface("10.1.0.2/24"), ipaddress.ip_interface("fd00::2/64")),
        routes=(Route(ipaddress.ip_network("192.168.0.0/16"), ipaddress.ip_address("10.1.0.1")),
                Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.1.0.1")),
                Route(ipaddress.ip_network("::/0"), ipaddress.ip_address("fd00::1"))),
        disable_dad=True, forward_families=(4, 6),
    )


def test_plan_keeps_ipam_default_route():
    conf = config.parse({**BASE, "isDefaultGateway": True})
    ipam = Result(ips=(IPConfig(ipaddress.ip_interface("10.1.0.2/24"), ipaddress.ip_address("10.1.0.1")),),
                  routes=(Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.1.0.254")),))
    plan = plan_add(conf, "c1", "/p", "eth0", ipam)
    assert plan.routes == ipam.routes


def test_plan_without_gateway_has_no_bridge_address():
    conf = config.parse(BASE)
    ipam = Result(ips=(IPConfig(ipaddress.ip_interface("10.1.0.2/24"), ipaddress.ip_address("10.1.0.1")),))
    plan = plan_add(conf, "c1", "/p", "eth0", ipam)
    assert plan.bridge_addresses == () and plan.routes == () and plan.forward_families == ()
