"""Hostile and odd inputs (issue 16): DEL always finishes and never touches what is not pycni's;
ADD refuses up front, with the right code and a message a person understands, and leaves nothing.
Each case runs with masquerade and a host port on nftables and on legacy iptables."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from .conftest import BIN, IP, netconf, sh

BACKENDS = ["nftables", "iptables"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def conf_for(node, backend, **extra):  # noqa: F811
    return netconf(node, "1.1.0", ipMasq=True, backend=backend, capabilities={"portMappings": True},
                   runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]}, **extra)


def nothing_left(node, backend) -> list[str]:  # noqa: F811
    left = [f"reservation {r}" for r in node.reservations("testnet")]
    left += [f"veth {v}" for v in node.links() if v.startswith("veth")]
    text = sh("nft", "list", "ruleset", ns=node.name) if backend == "nftables" else \
        sh("iptables-legacy-save", ns=node.name) + sh("ip6tables-legacy-save", ns=node.name)
    left += [line.strip() for line in text.splitlines() if "pycni testnet/" in line]
    return left


def uplink(node):  # noqa: F811
    node.sh("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    node.sh("ip", "link", "set", "uplink0", "up")


@pytest.mark.parametrize("form", ["self", "named", "pid"])
def test_del_in_the_nodes_own_namespace_never_touches_the_uplink(node, backend, form):
    uplink(node)
    keeper = None
    if form == "self":
        netns = "/proc/self/ns/net"
    elif form == "named":
        netns = f"/run/netns/{node.name}"
    else:
        keeper = subprocess.Popen([IP, "netns", "exec", node.name, "sleep", "60"])
        for _ in range(100):
            if sh("ip", "netns", "identify", str(keeper.pid)).strip() == node.name:
                break
        netns = f"/proc/{keeper.pid}/ns/net"
    try:
        for command in ("ADD", "DEL"):
            res = node.pycni(command, conf_for(node, backend), netns, cid="evil", ifname="uplink0")
            assert res.rc != 0 and res.code == 8, (command, res.out)
        assert "uplink0" in node.links() and "uplink1" in node.links()
    finally:
        if keeper:
            keeper.kill()
            keeper.wait()


def test_del_leaves_a_pod_interface_pycni_did_not_make(node, backend):
    pod = node.pod()
    node.sh("ip", "link", "add", "decoy0", "type", "veth", "peer", "name", "eth0")
    node.sh("ip", "link", "set", "eth0", "netns", pod)
    res = node.pycni("DEL", conf_for(node, backend), pod, cid="never-added")
    assert res.rc == 0, res.out
    assert "eth0" in sh("ip", "-o", "link", "show", ns=pod) and "decoy0" in node.links()


def test_mtu_add_refuses_yet_del_finishes(node, backend):
    pod = node.pod()
    bad = node.pycni("ADD", conf_for(node, backend, mtu=65536), pod, cid="m")
    assert bad.rc != 0 and bad.code == 7 and "mtu" in bad.out["msg"] + bad.out["details"]
    assert nothing_left(node, backend) == []
    good = node.pycni("ADD", conf_for(node, backend), pod, cid="m")
    assert good.rc == 0, good.out
    # the config changed since (a typo, an upgrade): the pod must still be deletable
    dele = node.pycni("DEL", conf_for(node, backend, mtu=65536), pod, cid="m")
    assert dele.rc == 0, dele.out
    assert nothing_left(node, backend) == []


def test_data_dir_a_dangling_symlink(node, backend):
    pod = node.pod()
    link = node.tmp / "gone"
    link.symlink_to(node.tmp / "nowhere")
    conf = conf_for(node, backend)
    conf["ipam"]["dataDir"] = str(link)
    add = node.pycni("ADD", conf, pod, cid="d")
    assert add.rc != 0 and add.code == 5 and "IPAM data directory" in add.out["msg"], add.out
    assert nothing_left(node, backend) == []
    dele = node.pycni("DEL", conf, pod, cid="d")
    assert dele.rc == 0, dele.out
    assert not (node.tmp / "nowhere").exists()          # DEL made nothing


def test_data_dir_out_of_inodes(node, backend):
    """A tmpfs whose inodes are all used, in a private mount namespace of the node."""
    pod = node.pod()
    top = node.tmp / "full"
    top.mkdir()
    conf = conf_for(node, backend)
    conf["ipam"]["dataDir"] = str(top / "ipam")
    (node.tmp / "conf.json").write_text(json.dumps(conf))
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {
        "CNI_CONTAINERID": "full", "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0",
        "CNI_PATH": str(BIN), "PYCNI_LOG_FILE": str(node.log_file), "PYCNI_HELPER": "0",
        "PYCNI_HELPER_SOCKET": str(node.tmp / "helper.sock"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}.items())
    run = f"env {env} {BIN / 'pycni'} < {node.tmp / 'conf.json'}"
    script = (f"mount -t tmpfs -o size=4m,nr_inodes=64 pycni-full {top} && mkdir {top}/ipam && "
              f"i=0; while touch {top}/f$i 2>/dev/null; do i=$((i+1)); done; "
              f"echo ADD; CNI_COMMAND=ADD {run}; echo rc=$?; echo DEL; CNI_COMMAND=DEL {run}; echo rc=$?")
    out = subprocess.run([IP, "netns", "exec", node.name, "unshare", "--mount", "--propagation", "private",
                          "sh", "-c", script], capture_output=True, text=True, timeout=120).stdout
    add_part, del_part = out.split("DEL\n", 1)
    add = json.loads(add_part.split("ADD\n", 1)[1].rsplit("rc=", 1)[0])
    assert add["code"] == 5 and "No space left on device" in add["details"], add
    assert del_part.strip().endswith("rc=0"), del_part
    assert nothing_left(node, backend) == []


def test_ifname_lo_is_refused_and_never_touched(node, backend):
    pod = node.pod()
    add = node.pycni("ADD", conf_for(node, backend), pod, cid="l", ifname="lo")
    assert add.rc != 0 and add.code == 4 and "loopback" in add.out["details"], add.out
    assert nothing_left(node, backend) == []
    dele = node.pycni("DEL", conf_for(node, backend), pod, cid="l", ifname="lo")
    assert dele.rc == 0, dele.out
    assert "lo" in sh("ip", "-o", "link", "show", "up", ns=pod)


def test_container_id_over_the_limit(node, backend):
    pod = node.pod()
    cid = "a" * 2000
    add = node.pycni("ADD", conf_for(node, backend), pod, cid=cid)
    assert add.rc != 0 and add.code == 4
    assert add.out["msg"] == "containerID too long" and "at most 1024" in add.out["details"]
    dele = node.pycni("DEL", conf_for(node, backend), pod, cid=cid)
    assert dele.rc == 0, dele.out
    assert nothing_left(node, backend) == []


def test_container_id_at_the_limit_works(node, backend):
    """A link alias holds 255 bytes; the alias of a long attachment is its hash instead."""
    pod = node.pod()
    cid = "b" * 1024
    conf = conf_for(node, backend)
    add = node.pycni("ADD", conf, pod, cid=cid)
    assert add.rc == 0, add.out
    assert node.pycni("CHECK", {**conf, "prevResult": add.out}, pod, cid=cid).rc == 0
    dele = node.pycni("DEL", conf, pod, cid=cid)
    assert dele.rc == 0, dele.out
    assert nothing_left(node, backend) == []
    # GC finds such an attachment by its hashed alias too
    assert node.pycni("ADD", conf, pod, cid=cid).rc == 0
    gc = node.pycni("GC", {k: v for k, v in conf.items() if k != "runtimeConfig"})
    assert gc.rc == 0, gc.out
    assert nothing_left(node, backend) == []


def test_del_takes_a_veth_an_add_was_killed_before_naming(node, backend):
    """An ADD killed between creating the veth pair and setting its alias leaves a veth with the
    attachment's hashed name and no alias (found by the crash suite): that one is pycni's. A link of
    that name of another kind is not."""
    from cni.spec.names import host_veth_name

    pod = node.pod()
    name = host_veth_name("testnet", "killed", "eth0")
    node.sh("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", pod)
    assert node.pycni("DEL", conf_for(node, backend), pod, cid="killed").rc == 0
    assert name not in node.links()
    other = host_veth_name("testnet", "notmine", "eth0")
    node.sh("ip", "link", "add", other, "type", "bridge")
    assert node.pycni("DEL", conf_for(node, backend), pod, cid="notmine").rc == 0
    assert other in node.links()
