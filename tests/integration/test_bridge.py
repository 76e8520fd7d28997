"""The real `pycni` executable, run as a runtime runs it, checked against what the kernel shows."""

from __future__ import annotations

import json

import pytest

from cni.spec import names

from .conftest import BIN, netconf, sh

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def ping(ns: str, addr: str) -> bool:
    cmd = ["ping", "-6" if ":" in addr else "-4", "-c", "1", "-W", "2", addr]
    return sh(*cmd, ns=ns, check=False).count(" 0% packet loss") == 1


def addr_of(ns: str, ifname: str = "eth0") -> list[str]:
    info = json.loads(sh("ip", "-j", "addr", "show", "dev", ifname, ns=ns))
    return [f"{a['local']}/{a['prefixlen']}" for a in info[0]["addr_info"] if a.get("scope") == "global"]


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del(node, version):
    pod = node.pod()
    conf = netconf(node, version)
    add = node.pycni("ADD", conf, pod)
    assert add.rc == 0, add.out
    res = add.out
    assert res["cniVersion"] == version
    veth = names.host_veth_name("testnet", "c1", "eth0")
    assert [i["name"] for i in res["interfaces"]] == ["tbr0", veth, "eth0"]
    assert res["interfaces"][2]["sandbox"] == f"/var/run/netns/{pod}"
    ip = res["ips"][0]
    assert ip["address"] == "10.88.0.2/24" and ip["gateway"] == "10.88.0.1" and ip["interface"] == 2
    assert ("version" in ip) == (version < "1.0.0")
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}]

    # what the kernel shows
    assert addr_of(pod) == ["10.88.0.2/24"]
    assert "default via 10.88.0.1 dev eth0" in sh("ip", "route", ns=pod)
    assert json.loads(sh("ip", "-j", "link", "show", "eth0", ns=pod))[0]["address"] == res["interfaces"][2]["mac"]
    host = json.loads(node.sh("ip", "-j", "-d", "link", "show", veth))[0]
    assert host["master"] == "tbr0" and host["ifalias"] == f"pycni/testnet/c1/eth0"
    assert json.loads(node.sh("ip", "-j", "-d", "link", "show", "tbr0"))[0]["linkinfo"]["info_kind"] == "bridge"
    assert addr_of(node.name, "tbr0") == ["10.88.0.1/24"]
    assert node.sh("sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert node.reservations("testnet") == ["10.88.0.2"]
    assert ping(pod, "10.88.0.1")

    if version >= "0.4.0":
        chk = node.pycni("CHECK", {**conf, "prevResult": res}, pod)
        assert chk.rc == 0, chk.out

    dele = node.pycni("DEL", {**conf, "prevResult": res}, pod)
    assert dele.rc == 0, dele.out
    assert veth not in node.links()
    assert "eth0" not in sh("ip", "-o", "link", ns=pod)
    assert node.reservations("testnet") == [] and node.scratch_files("testnet") == []
    again = node.pycni("DEL", conf, pod)
    assert again.rc == 0, again.out


def test_two_pods_ping_each_other(node):
    p1, p2 = node.pod(), node.pod()
    conf = netconf(node)
    a = node.pycni("ADD", conf, p1, cid="a").out
    b = node.pycni("ADD", conf, p2, cid="b").out
    ip_a, ip_b = a["ips"][0]["address"].split("/")[0], b["ips"][0]["address"].split("/")[0]
    assert ip_a != ip_b
    assert ping(p1, ip_b) and ping(p2, ip_a)


def test_dual_stack(node):
    p1, p2 = node.pod(), node.pod()
    conf = netconf(node, "1.1.0", ranges=[[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]])
    a = node.pycni("ADD", conf, p1, cid="a")
    assert a.rc == 0, a.out
    b = node.pycni("ADD", conf, p2, cid="b").out
    assert [i["address"] for i in a.out["ips"]] == ["10.88.0.2/24", "fd88::2/64"]
    assert {r["dst"] for r in a.out["routes"]} == {"0.0.0.0/0", "::/0"}
    assert sorted(addr_of(p1)) == ["10.88.0.2/24", "fd88::2/64"]
    assert sh("sysctl", "-n", "net.ipv6.conf.eth0.accept_dad", ns=p1).strip() == "0"
    assert ping(p1, "fd88::3") and ping(p1, "fd88::1")
    assert b["ips"][1]["address"] == "fd88::3/64"
    chk = node.pycni("CHECK", {**conf, "prevResult": a.out}, p1, cid="a")
    assert chk.rc == 0, chk.out
    for cid, pod in (("a", p1), ("b", p2)):
        assert node.pycni("DEL", conf, pod, cid=cid).rc == 0
    assert node.reservations("testnet") == []


def test_options_mtu_hairpin_mac_static_ip(node):
    pod = node.pod()
    conf = netconf(node, "1.1.0", mtu=1400, hairpinMode=True)
    res = node.pycni("ADD", conf, pod, args="IgnoreUnknown=1;MAC=02:aa:bb:cc:dd:ee;IP=10.88.0.77;K8S_POD_NAME=x")
    assert res.rc == 0, res.out
    assert res.out["ips"][0]["address"] == "10.88.0.77/24"
    link = json.loads(sh("ip", "-j", "link", "show", "eth0", ns=pod))[0]
    assert link["address"] == "02:aa:bb:cc:dd:ee" and link["mtu"] == 1400
    assert res.out["interfaces"][2]["mtu"] == 1400
    veth = names.host_veth_name("testnet", "c1", "eth0")
    port = json.loads(node.sh("ip", "-j", "-d", "link", "show", veth))[0]
    assert port["mtu"] == 1400 and port["linkinfo"]["info_slave_data"]["hairpin"] is True


def test_runtime_config_ips_and_mac_capabilities(node):
    pod = node.pod()
    conf = netconf(node, "1.0.0", runtimeConfig={"ips": ["10.88.0.50/24"], "mac": "02:00:00:00:00:50"})
    res = node.pycni("ADD", conf, pod)
    assert res.rc == 0, res.out
    assert res.out["ips"][0]["address"] == "10.88.0.50/24"
    assert res.out["interfaces"][2]["mac"] == "02:00:00:00:00:50"


def test_del_when_netns_is_gone_releases_addresses(node):
    pod = node.pod()
    conf = netconf(node)
    assert node.pycni("ADD", conf, pod).rc == 0
    sh("ip", "netns", "del", pod)
    node.pods.remove(pod)
    assert node.reservations("testnet") == ["10.88.0.2"]
    dele = node.pycni("DEL", conf, pod)          # the path no longer exists
    assert dele.rc == 0, dele.out
    assert node.reservations("testnet") == []
    assert not [link for link in node.links() if link.startswith("veth")]


def test_del_with_empty_netns_and_never_added(node):
    conf = netconf(node)
    assert node.pycni("DEL", conf, "", cid="never-added").rc == 0
    pod = node.pod()
    assert node.pycni("ADD", conf, pod).rc == 0
    assert node.pycni("DEL", conf, "").rc == 0
    assert node.reservations("testnet") == []


def test_existing_ifname_in_pod_is_an_error_and_leaks_nothing(node):
    pod = node.pod()
    conf = netconf(node)
    assert node.pycni("ADD", conf, pod, cid="first").rc == 0
    res = node.pycni("ADD", conf, pod, cid="second")
    assert res.rc != 0 and "already has an interface named eth0" in res.out["msg"]
    assert node.reservations("testnet") == ["10.88.0.2"]
    assert names.host_veth_name("testnet", "second", "eth0") not in node.links()


def test_failure_after_ipam_rolls_back(node):
    pod = node.pod()
    node.sh("ip", "link", "add", "tbr0", "type", "veth", "peer", "name", "tbr0p")  # name taken, not a bridge
    res = node.pycni("ADD", netconf(node), pod)
    assert res.rc != 0 and res.code == 7
    assert "not a bridge" in res.out["msg"]
    assert node.reservations("testnet") == []
    assert not [link for link in node.links() if link.startswith("veth")]
    assert "eth0" not in sh("ip", "-o", "link", ns=pod)


def test_force_address(node):
    node.sh("ip", "link", "add", "tbr0", "type", "bridge")
    node.sh("ip", "addr", "add", "10.77.0.1/24", "dev", "tbr0")
    pod = node.pod()
    res = node.pycni("ADD", netconf(node), pod)
    assert res.rc != 0 and "already has an IP address different from" in res.out["msg"]
    assert node.reservations("testnet") == []
    res = node.pycni("ADD", netconf(node, forceAddress=True), pod)
    assert res.rc == 0, res.out
    assert addr_of(node.name, "tbr0") == ["10.88.0.1/24"]


def test_check_reports_each_mismatch(node):
    pod = node.pod()
    conf = netconf(node)
    res = node.pycni("ADD", conf, pod).out
    conf = {**conf, "prevResult": res}
    sh("ip", "route", "del", "default", ns=pod)
    chk = node.pycni("CHECK", conf, pod)
    assert chk.rc != 0 and "route missing" in chk.out["msg"]
    sh("ip", "route", "add", "default", "via", "10.88.0.1", ns=pod)
    node.sh("ip", "link", "set", names.host_veth_name("testnet", "c1", "eth0"), "nomaster")
    chk = node.pycni("CHECK", conf, pod)
    assert chk.rc != 0 and "not on the bridge" in chk.out["msg"]
    no_prev = node.pycni("CHECK", netconf(node), pod)
    assert no_prev.rc != 0 and "prevResult" in no_prev.out["msg"]


def test_status_and_exhaustion(node):
    conf = netconf(node, "1.1.0", subnet="10.88.0.0/29")   # .2 - .6
    assert node.pycni("STATUS", conf).rc == 0
    pods = [node.pod() for _ in range(6)]
    for i, pod in enumerate(pods[:5]):
        assert node.pycni("ADD", conf, pod, cid=f"c{i}").rc == 0
    full = node.pycni("ADD", conf, pods[5], cid="c5")
    assert full.rc != 0 and "no IP addresses available" in full.out["msg"]
    assert "eth0" not in sh("ip", "-o", "link", ns=pods[5])
    st = node.pycni("STATUS", conf)
    assert st.rc != 0 and st.code == 50
    assert node.pycni("DEL", conf, pods[0], cid="c0").rc == 0
    assert node.pycni("STATUS", conf).rc == 0
    assert node.pycni("ADD", conf, pods[5], cid="c5").rc == 0


def test_gc_removes_only_invalid_attachments(node):
    conf = netconf(node, "1.1.0")
    pods = [node.pod() for _ in range(3)]
    for i, pod in enumerate(pods):
        assert node.pycni("ADD", conf, pod, cid=f"c{i}").rc == 0
    other = netconf(node, "1.1.0", name="othernet", subnet="10.89.0.0/24", bridge="tbr1")
    other_pod = node.pod()
    assert node.pycni("ADD", other, other_pod, cid="c0").rc == 0
    gc = node.pycni("GC", {**conf, "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert gc.rc == 0, gc.out
    assert node.reservations("testnet") == ["10.88.0.3"]
    veths = [link for link in node.links() if link.startswith("veth")]
    assert sorted(veths) == sorted([names.host_veth_name("testnet", "c1", "eth0"),
                                    names.host_veth_name("othernet", "c0", "eth0")])
    assert node.reservations("othernet") == ["10.89.0.2"]   # another network's data is untouched


def test_version_command(node):
    res = node.pycni("VERSION", {"cniVersion": "1.0.0"})
    assert res.rc == 0
    assert res.out == {"cniVersion": "1.0.0", "supportedVersions": VERSIONS}


BAD_INPUTS = [
    ("malformed json", b"{", {}, 6),
    ("missing name", {"cniVersion": "1.0.0", "type": "pycni"}, {}, 7),
    ("missing cniVersion", {"name": "testnet", "type": "pycni"}, {}, 1),
    ("unsupported version", "version:0.2.0", {}, 1),
    ("invalid cidr", "subnet:10.88.0.0/33", {}, 7),
    ("host bits set", "subnet:10.88.0.1/24", {}, 7),
    ("ifname too long", None, {"CNI_IFNAME": "eth0123456789abc"}, 4),
    ("ifname with slash", None, {"CNI_IFNAME": "../eth0"}, 4),
    ("container id escapes", None, {"CNI_CONTAINERID": "../../etc"}, 4),
    ("network name escapes", "name:../../etc", {}, 7),
    ("netns missing", None, {"CNI_NETNS": "/var/run/netns/pycnit-no-such"}, 4),
    ("netns is not a netns", None, {"CNI_NETNS": "/etc/hostname"}, 4),
    ("unknown command", None, {"CNI_COMMAND": "FROB"}, 4),
]


@pytest.mark.parametrize("case, conf, env, code", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0"])
def test_bad_input_changes_nothing(node, case, conf, env, code, version):
    pod = node.pod()
    base = netconf(node, version)
    if conf is None:
        conf = base
    elif isinstance(conf, str):
        key, value = conf.split(":", 1)
        conf = dict(base)
        if key == "version":
            conf["cniVersion"] = value
        elif key == "name":
            conf["name"] = value
        else:
            conf["ipam"] = {**base["ipam"], "ranges": [[{"subnet": value}]]}
    env = dict(env)
    res = node.pycni(env.pop("CNI_COMMAND", "ADD"), conf, pod, env=env)
    assert res.rc != 0
    assert res.code == code, res.out
    assert res.out["msg"] and set(res.out) <= {"cniVersion", "code", "msg", "details"}
    assert node.links() == ["lo"]
    assert not node.data_dir.exists() or not any(node.data_dir.rglob("*.*.*.*"))
    assert len(sh("ip", "-o", "link", ns=pod).splitlines()) == 1   # only lo


def test_delegated_host_local_ipam(node):
    pod = node.pod()
    conf = netconf(node)
    conf["ipam"] = {"type": "host-local", "dataDir": str(node.data_dir), "ranges": [[{"subnet": "10.88.0.0/24"}]]}
    res = node.pycni("ADD", conf, pod)
    assert res.rc == 0, res.out
    assert res.out["ips"][0]["address"] == "10.88.0.2/24"
    assert node.reservations("testnet") == ["10.88.0.2"]
    assert node.pycni("CHECK", {**conf, "prevResult": res.out}, pod).rc == 0
    assert node.pycni("DEL", conf, pod).rc == 0
    assert node.reservations("testnet") == []


def test_delegated_ipam_error_keeps_its_code(node):
    pod = node.pod()
    conf = netconf(node)
    conf["ipam"] = {"type": "no-such-ipam"}
    res = node.pycni("ADD", conf, pod)
    assert res.rc != 0 and "no-such-ipam" in res.out["msg"]
    assert node.links() == ["lo"]


def test_concurrent_adds_on_a_fresh_node(node):
    """Pods started at once race to create the bridge and its address: all must succeed."""
    import subprocess

    conf = netconf(node, "1.0.0")
    pods = [node.pod() for _ in range(12)]
    procs = []
    for i, pod in enumerate(pods):
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{i}", "CNI_NETNS": f"/var/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "PYCNI_HELPER_SOCKET": str(node.tmp / "helper.sock")}
        procs.append(subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env))
    outs = [json.loads(p.communicate(json.dumps(conf).encode())[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    addrs = [o["ips"][0]["address"] for o in outs]
    assert len(set(addrs)) == 12
    assert addr_of(node.name, "tbr0") == ["10.88.0.1/24"]
    assert ping(pods[0], addrs[-1].split("/")[0])


def test_vlan_is_applied_or_clearly_unsupported(node):
    pod = node.pod()
    res = node.pycni("ADD", netconf(node, vlan=100), pod)
    if res.rc == 0:
        veth = names.host_veth_name("testnet", "c1", "eth0")
        assert '"vlan": 100' in node.sh("bridge", "-j", "-p", "vlan", "show", "dev", veth) or \
            "100" in node.sh("bridge", "vlan", "show", "dev", veth)
    else:   # kernels without CONFIG_BRIDGE_VLAN_FILTERING (this CI's) say so, and leak nothing
        assert res.code == 2 and "VLAN filtering" in res.out["details"]
        assert node.reservations("testnet") == []
        assert not [link for link in node.links() if link.startswith("veth")]


def test_status_names_missing_host_programs(node, tmp_path):
    """STATUS says what the host lacks before a pod needs it: here `nft` is not on PATH."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    masq = netconf(node, "1.1.0", ipMasq=True, ipMasqBackend="nftables")
    assert node.pycni("STATUS", masq).rc == 0
    st = node.pycni("STATUS", masq, env={"PATH": str(empty)})
    assert st.code == 50 and "`nft` program is not in PATH" in st.out["details"]
    # without masquerade or port mapping nothing needs nft
    assert node.pycni("STATUS", netconf(node, "1.1.0"), env={"PATH": str(empty)}).rc == 0
    portmap = {"cniVersion": "1.1.0", "name": "testnet", "type": "pycni-portmap", "backend": "nftables"}
    st = node.run(BIN / "pycni-portmap", "STATUS", portmap, env={"PATH": str(empty)})
    assert st.code == 50 and "nftables" in st.out["details"]
