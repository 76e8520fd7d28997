import ipaddress

import pytest

from cni.spec import result
from cni.spec.errors import DecodeFailure
from cni.spec.result import DNS, Interface, IPConfig, Result, Route

R = Result(
    interfaces=(Interface("cni0", "aa:bb:cc:00:00:01", mtu=1500),
                Interface("veth0123456789a", "aa:bb:cc:00:00:02", mtu=1500),
                Interface("eth0", "aa:bb:cc:00:00:03", "/var/run/netns/p", mtu=1500)),
    ips=(IPConfig(ipaddress.ip_interface("10.1.0.2/24"), ipaddress.ip_address("10.1.0.1"), 2),
         IPConfig(ipaddress.ip_interface("fd00::2/64"), ipaddress.ip_address("fd00::1"), 2)),
    routes=(Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.1.0.1"), mtu=1400),),
    dns=DNS(("10.1.0.53",), "example.org", ("example.org",), ()),
)


def test_render_1_1_0_has_mtu_and_no_ip_version():
    out = result.render(R, "1.1.0")
    assert out["cniVersion"] == "1.1.0"
    assert out["interfaces"][2] == {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "mtu": 1500,
                                    "sandbox": "/var/run/netns/p"}
    assert out["ips"][1] == {"interface": 2, "address": "fd00::2/64", "gateway": "fd00::1"}
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400}]
    assert out["dns"] == {"nameservers": ["10.1.0.53"], "domain": "example.org", "search": ["example.org"]}


def test_render_1_0_0_drops_1_1_fields():
    out = result.render(R, "1.0.0")
    assert "mtu" not in out["interfaces"][0]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert "version" not in out["ips"][0]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_render_0_x_has_ip_version(version):
    out = result.render(R, version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_parse_render_roundtrip(version):
    again = result.parse(result.render(R, version))
    assert again.ips == R.ips
    assert again.dns == R.dns
    assert [i.name for i in again.interfaces] == ["cni0", "veth0123456789a", "eth0"]


def test_ipam_result_has_no_interfaces():
    out = result.render(Result(ips=(IPConfig(ipaddress.ip_interface("10.1.0.2/24")),)), "1.0.0")
    assert out == {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}], "dns": {}}


@pytest.mark.parametrize("bad", [
    [], {"ips": [{"address": "10.1.0.2"}]}, {"ips": [{"address": "x/24"}]},
    {"routes": [{"gw": "10.0.0.1"}]}, {"interfaces": [{"mac": "x"}]}, {"dns": {"nameservers": "1.1.1.1"}},
])
def test_parse_rejects_malformed(bad):
    with pytest.raises(DecodeFailure):
        result.parse(bad)
