"""`pycni inspect` on a node namespace: the attachments as the kernel, the IPAM store and the
firewall hold them, and `--check` finding the leaks a test plants (an address without a pod, a
veth without a reservation, an nftables element without a pod, a policy record without a pod)."""

from __future__ import annotations

import json
import os
import subprocess

from .conftest import BIN, IP, netconf, node  # noqa: F401  (node: the fixture)


def inspect(node, *args: str) -> tuple[int, str]:
    p = subprocess.run([IP, "netns", "exec", node.name, str(BIN / "pycni"), "inspect",
                        "--conf-dir", str(node.tmp / "net.d"), *args], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if not k.startswith("CNI_")})
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, p.stdout


def test_inspect_lists_attachments_and_check_finds_planted_leaks(node):
    conf = netconf(node, name="insp", ipMasq=True, backend="nftables", capabilities={"portMappings": True},
                   networkPolicy=str(node.tmp / "policy"))
    conf_dir = node.tmp / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-insp.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "insp", "plugins": [{k: v for k, v in conf.items()
                                                             if k not in ("cniVersion", "name")}]}))
    pods = [node.pod(), node.pod()]
    web = {**conf, "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
    a = node.pycni("ADD", web, pods[0], cid="web", args="IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=web")
    b = node.pycni("ADD", conf, pods[1], cid="other")
    assert a.rc == 0 and b.rc == 0, (a.out, b.out)
    ip_a, ip_b = (r.out["ips"][0]["address"].split("/")[0] for r in (a, b))

    rc, out = inspect(node, "--json", "--check")
    assert rc == 0, out
    report = json.loads(out)
    assert report["problems"] == []
    atts = {x["container_id"]: x for x in report["attachments"]}
    assert set(atts) == {"web", "other"}
    web_att = atts["web"]
    assert web_att["network"] == "insp" and web_att["ifname"] == "eth0" and web_att["bridge"] == "tbr0"
    assert web_att["addresses"] == [ip_a] and web_att["host_veth"].startswith("veth")
    assert web_att["host_ports"] == [f"tcp 8080 -> {ip_a}:80"] and web_att["firewall"] == "nftables"
    assert web_att["pod"] == "x/web"      # from CNI_ARGS, recorded at ADD
    assert web_att["netns"] == f"/var/run/netns/{pods[0]}" and atts["other"]["netns"] == f"/var/run/netns/{pods[1]}"
    assert atts["other"]["addresses"] == [ip_b] and atts["other"]["host_ports"] == []
    rc, table = inspect(node)
    assert rc == 0 and "x/web" in table and "2 attachments, 0 problems" in table

    # plant: a reservation nobody holds, a veth whose reservation is gone, a stray element, and
    # a policy record of a pod that is gone
    store = node.data_dir / "insp"
    (store / "10.88.0.200").write_text("ghost\r\neth0")
    (store / ip_b).unlink()
    node.sh("nft", "add", "element", "inet", "pycni", "masq4",
            '{ 10.88.0.201 comment "deadbeef-0123456789abcdef pycni insp/ghost2/eth0" }')
    records = node.tmp / "policy" / "attachments"
    (records / ("f" * 64)).write_text(json.dumps({"pod": ["x", "gone"], "network": "insp",
                                                  "ips": ["10.88.0.202"], "elements": []}))
    rc, out = inspect(node, "--check")
    assert rc == 1, out
    assert "4 problems" in out
    assert "address without interface: insp 10.88.0.200 held by ghost/eth0" in out
    assert f"interface without address: insp other/eth0" in out
    assert "firewall element without interface: nftables masq4 { 10.88.0.201 }" in out
    assert "network policy record without interface: insp pod x/gone 10.88.0.202" in out
    rc, _ = inspect(node)                   # without --check: the same report, exit 0
    assert rc == 0

    (store / "10.88.0.200").unlink()
    for pod, cid in zip(pods, ("web", "other")):
        assert node.pycni("DEL", conf, pod, cid=cid).rc == 0


def test_check_joins_a_hashed_alias_and_reads_id_only_reservations_as_del_and_gc(node):
    """Issue 23 rows 7 and 8: a container id too long for a readable alias (the veth then carries
    `pycni#<network hash>#<attachment hash>`) is one attachment with its reservation, firewall
    elements and policy record, and a reservation really missing is reported; a host-local
    id-only reservation of a live attachment is not a leak."""
    conf = netconf(node, name="insp", ipMasq=True, backend="nftables", capabilities={"portMappings": True},
                   networkPolicy=str(node.tmp / "policy"))
    conf_dir = node.tmp / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-insp.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "insp", "plugins": [{k: v for k, v in conf.items()
                                                             if k not in ("cniVersion", "name")}]}))
    long_id = "c" * 300
    pods = [node.pod(), node.pod()]
    web = {**conf, "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
    a = node.pycni("ADD", web, pods[0], cid=long_id, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=long")
    b = node.pycni("ADD", conf, pods[1], cid="short")
    assert a.rc == 0 and b.rc == 0, (a.out, b.out)
    assert "pycni#" in node.sh("ip", "-d", "link", "show")
    ip_a, ip_b = (r.out["ips"][0]["address"].split("/")[0] for r in (a, b))
    try:
        rc, out = inspect(node, "--json", "--check")
        report = json.loads(out)
        assert rc == 0 and report["problems"] == [], report["problems"]
        att = next(x for x in report["attachments"] if x["addresses"] == [ip_a])
        assert (att["network"], att["container_id"], att["ifname"], att["pod"]) == ("insp", long_id, "eth0", "x/long")
        assert att["host_ports"] == [f"tcp 8080 -> {ip_a}:80"] and att["firewall"] == "nftables"

        # host-local's old format: the file names the container only
        store = node.data_dir / "insp"
        (store / ip_b).write_text("short")
        rc, out = inspect(node, "--check")
        assert rc == 0 and "0 problems" in out, out

        # the long id's reservation really gone: reported, and nothing else is
        saved = (store / ip_a).read_text()
        (store / ip_a).unlink()
        rc, out = inspect(node, "--check")
        assert rc == 1 and "1 problems" in out, out
        assert "interface without address: insp ?/? (veth" in out, out
        (store / ip_a).write_text(saved)
    finally:
        for pod, cid in zip(pods, (long_id, "short")):
            assert node.pycni("DEL", conf, pod, cid=cid).rc == 0
