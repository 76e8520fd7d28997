"""Side by side with the reference plugins (Debian's containernetworking-plugins, /usr/lib/cni)."""

from __future__ import annotations

import pytest

from .conftest import BIN, REFERENCE_DIR, netconf
from .test_bridge import ping

pytestmark = pytest.mark.skipif(not (REFERENCE_DIR / "bridge").exists(),
                                reason="reference plugins not installed")


def shape(obj):
    """The keys and value types of a result, without its values."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(v) for v in obj]
    return type(obj).__name__


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
@pytest.mark.parametrize("ipam_type", ["host-local", "pycni-ipam"])
def test_same_conflist_same_result_shape(node, version, ipam_type):
    ours_pod, ref_pod = node.pod(), node.pod()
    conf = netconf(node, version, ranges=[[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]])
    ref_conf = {**conf, "type": "bridge", "ipam": {**conf["ipam"], "type": ipam_type}}
    ours = node.pycni("ADD", conf, ours_pod, cid="ours")
    ref = node.run(REFERENCE_DIR / "bridge", "ADD", ref_conf, ref_pod, cid="ref")
    assert ours.rc == 0, ours.out
    assert ref.rc == 0, ref.out
    assert shape(ours.out) == shape(ref.out)
    assert ours.out["routes"] == ref.out["routes"]
    assert [ip["gateway"] for ip in ours.out["ips"]] == [ip["gateway"] for ip in ref.out["ips"]]
    # both pods share the bridge and the address pool, and reach each other
    ref_ip = ref.out["ips"][0]["address"].split("/")[0]
    assert ref_ip != ours.out["ips"][0]["address"].split("/")[0]
    assert ping(ours_pod, ref_ip)
    assert node.run(REFERENCE_DIR / "bridge", "DEL", ref_conf, ref_pod, cid="ref").rc == 0
    assert node.pycni("DEL", conf, ours_pod, cid="ours").rc == 0
    assert node.reservations("testnet") == []


def test_pycni_ipam_standalone(node):
    conf = {"cniVersion": "1.0.0", "name": "ipamnet",
            "ipam": {"type": "pycni-ipam", "dataDir": str(node.data_dir),
                     "ranges": [[{"subnet": "10.90.0.0/24", "gateway": "10.90.0.254"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}}
    ipam = BIN / "pycni-ipam"
    add = node.run(ipam, "ADD", conf, "/dev/null", cid="x")
    assert add.rc == 0, add.out
    assert add.out == {"cniVersion": "1.0.0", "ips": [{"address": "10.90.0.1/24", "gateway": "10.90.0.254"}],
                       "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    assert node.run(ipam, "CHECK", {**conf, "prevResult": add.out}, "/dev/null", cid="x").rc == 0
    assert node.run(ipam, "STATUS", {**conf, "cniVersion": "1.1.0"}).rc == 0
    assert node.run(ipam, "DEL", conf, "", cid="x").rc == 0
    assert node.reservations("ipamnet") == []
    chk = node.run(ipam, "CHECK", {**conf, "prevResult": add.out}, "/dev/null", cid="x")
    assert chk.rc != 0


def test_host_local_and_pycni_ipam_share_a_data_dir(node):
    conf = {"cniVersion": "1.0.0", "name": "shared",
            "ipam": {"dataDir": str(node.data_dir), "ranges": [[{"subnet": "10.91.0.0/28"}]]}}
    got = []
    for i in range(12):
        exe = REFERENCE_DIR / "host-local" if i % 2 else BIN / "pycni-ipam"
        c = {**conf, "ipam": {**conf["ipam"], "type": exe.name}}
        res = node.run(exe, "ADD", c, "/dev/null", cid=f"c{i}")
        assert res.rc == 0, res.out
        got.append(res.out["ips"][0]["address"])
    assert len(set(got)) == 12
    # each releases what the other allocated
    for i in range(12):
        exe = BIN / "pycni-ipam" if i % 2 else REFERENCE_DIR / "host-local"
        c = {**conf, "ipam": {**conf["ipam"], "type": exe.name}}
        assert node.run(exe, "DEL", c, "", cid=f"c{i}").rc == 0
    assert node.reservations("shared") == []
