"""Capability args from Go runtimes: field names matched as Go's encoding/json matches them."""

import ipaddress

import pytest

from cni.spec.errors import InvalidConfig
from cni.spec.fields import go_keys
from cni.firewall.options import PortMapping, parse_mappings
from ipam.config import parse_range


def test_exact_key_wins_then_any_case():
    assert go_keys({"hostPort": 1, "HOSTPORT": 2}, ("hostPort",)) == {"hostPort": 1}
    assert go_keys({"HostPort": 2}, ("hostPort",)) == {"hostPort": 2}
    assert go_keys({"other": 1}, ("hostPort",)) == {}


def test_containerd_go_cni_port_mappings():
    """containerd's CRI marshals go-cni's PortMapping struct, which has no json tags."""
    raw = [{"HostPort": 8088, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
           {"HostPort": 5353, "ContainerPort": 53, "Protocol": "udp", "HostIP": "10.0.0.1"}]
    assert parse_mappings(raw) == (
        PortMapping(8088, 80, "tcp", None),
        PortMapping(5353, 53, "udp", ipaddress.ip_address("10.0.0.1")))
    with pytest.raises(InvalidConfig):
        parse_mappings([{"HostPort": 0, "ContainerPort": 80}])


def test_ip_ranges_with_go_field_names():
    r = parse_range({"Subnet": "10.9.0.0/24", "RangeStart": "10.9.0.10", "Gateway": "10.9.0.1"})
    assert str(r.subnet) == "10.9.0.0/24" and str(r.start) == "10.9.0.10"
