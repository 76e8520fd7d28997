"""`pycni-loopback` (also installed as `loopback`): the pod's lo, as containerd's CRI asks for it."""

from __future__ import annotations

from .conftest import BIN, sh

CONF = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}


def test_add_check_del(node):
    pod = node.pod()
    sh("ip", "link", "set", "lo", "down", ns=pod)
    add = node.run(BIN / "pycni-loopback", "ADD", CONF, pod, ifname="lo")
    assert add.rc == 0, add.out
    assert add.out["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00",
                                      "sandbox": f"/var/run/netns/{pod}"}]
    assert {ip["address"] for ip in add.out["ips"]} >= {"127.0.0.1/8"}
    assert "UP" in sh("ip", "-o", "link", "show", "lo", ns=pod)
    sh("ping", "-c1", "-W1", "127.0.0.1", ns=pod)
    assert node.run(BIN / "pycni-loopback", "CHECK", {**CONF, "prevResult": add.out}, pod, ifname="lo").rc == 0

    assert node.run(BIN / "pycni-loopback", "DEL", CONF, pod, ifname="lo").rc == 0
    assert ",UP" not in sh("ip", "-o", "link", "show", "lo", ns=pod)
    chk = node.run(BIN / "pycni-loopback", "CHECK", {**CONF, "prevResult": add.out}, pod, ifname="lo")
    assert chk.rc != 0 and "down" in chk.out["msg"]
    # DEL again, and DEL of a namespace that is gone, succeed
    assert node.run(BIN / "pycni-loopback", "DEL", CONF, pod, ifname="lo").rc == 0
    assert node.run(BIN / "pycni-loopback", "DEL", CONF, "/var/run/netns/gone", ifname="lo").rc == 0


def test_refuses_a_non_loopback_interface(node):
    pod = node.pod()
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", ns=pod)
    bad = node.run(BIN / "pycni-loopback", "ADD", CONF, pod, ifname="eth0")
    assert bad.rc != 0 and bad.code == 4 and "not a loopback" in bad.out["msg"]
    missing = node.run(BIN / "pycni-loopback", "ADD", CONF, pod, ifname="nothere")
    assert missing.rc != 0 and "no link nothere" in missing.out["msg"]
