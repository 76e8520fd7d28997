"""Port mapping and masquerade with real traffic, for each firewall backend.

Topology (all throwaway namespaces): client ns (192.0.2.1, 2001:db8::1) -- veth -- node ns
(192.0.2.2 and 192.0.2.3, 2001:db8::2) running pycni, pods on the node's bridge with servers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BIN, DEV_BIN, REFERENCE_DIR, netconf, ready_line, sh

APP = str(Path(__file__).with_name("netapp.py"))
BACKENDS = ["nftables", "iptables"]


class World:
    def __init__(self, node, backend):
        self.node, self.backend = node, backend
        self.client = node.pod()            # a namespace beside the node, not on its bridge
        self.servers: list[subprocess.Popen] = []
        for ns in (node.name, self.client):   # no DAD on the test links: usable at once
            sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0", ns=ns)
        sh("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "client0", ns=node.name)
        sh("ip", "link", "set", "client0", "netns", self.client, ns=node.name)
        for cmd in (["ip", "addr", "add", "192.0.2.2/24", "dev", "uplink"],
                    ["ip", "addr", "add", "192.0.2.3/24", "dev", "uplink"],
                    ["ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "uplink", "nodad"],
                    ["ip", "link", "set", "uplink", "up"]):
            sh(*cmd, ns=node.name)
        for cmd in (["ip", "addr", "add", "192.0.2.1/24", "dev", "client0"],
                    ["ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "client0", "nodad"],
                    ["ip", "link", "set", "client0", "up"]):
            sh(*cmd, ns=self.client)

    def conf(self, **extra):
        c = netconf(self.node, "1.0.0", hairpinMode=True, backend=self.backend,
                    ranges=[[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]], **extra)
        c["capabilities"] = {"portMappings": True}
        return c

    def add_pod(self, cid, mappings, **extra):
        pod = self.node.pod()
        conf = {**self.conf(**extra), "runtimeConfig": {"portMappings": mappings}}
        res = self.node.pycni("ADD", conf, pod, cid=cid)
        assert res.rc == 0, res.out
        proc = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, APP, "serve", cid, "80"],
                                stdout=subprocess.PIPE, text=True)
        assert ready_line(proc).strip() == "ready"
        self.servers.append(proc)
        return pod, conf, res.out

    def ask(self, ns, kind, addr, port, src_port=0):
        args = [sys.executable, APP, kind, addr, str(port)] + ([str(src_port)] if src_port else [])
        return sh(*args, ns=ns, check=False).strip()

    def close(self):
        for p in self.servers:
            p.kill()
            p.wait()


@pytest.fixture(params=BACKENDS)
def world(node, request):
    w = World(node, request.param)
    try:
        yield w
    finally:
        w.close()


def test_hostport_from_outside_node_localhost_and_hairpin(world):
    pod, conf, res = world.add_pod("web", [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "192.0.2.2"},
        {"hostPort": 8082, "containerPort": 80, "protocol": "tcp", "hostIP": "2001:db8::2"},
        {"hostPort": 5353, "containerPort": 80, "protocol": "udp"}])
    n = world.node.name
    # from another host: DNAT keeps the client's address
    assert world.ask(world.client, "tcp", "192.0.2.2", 8080) == "web 192.0.2.1"
    assert world.ask(world.client, "tcp", "2001:db8::2", 8080) == "web 2001:db8::1"
    assert world.ask(world.client, "udp", "192.0.2.2", 5353) == "web 192.0.2.1"
    # hostIP: only that address answers
    assert world.ask(world.client, "tcp", "192.0.2.2", 8081) == "web 192.0.2.1"
    assert world.ask(world.client, "tcp", "192.0.2.3", 8081) == ""
    assert world.ask(world.client, "tcp", "192.0.2.3", 8080) == "web 192.0.2.1"
    assert world.ask(world.client, "tcp", "2001:db8::2", 8082) == "web 2001:db8::1"
    assert world.ask(world.client, "tcp", "192.0.2.2", 8082) == ""      # a v6 hostIP: not on v4
    # from the node itself: its own address and 127.0.0.1
    assert world.ask(n, "tcp", "192.0.2.2", 8080).startswith("web ")
    assert world.ask(n, "tcp", "127.0.0.1", 8080).startswith("web ")
    # hairpin: the pod reaches itself through the node address, masqueraded
    assert world.ask(pod, "tcp", "192.0.2.2", 8080) == "web 10.88.0.1"
    # transit traffic is not hijacked: only addresses of the node are DNATed
    assert world.ask(pod, "tcp", "192.0.2.1", 8080) == ""
    chk = world.node.pycni("CHECK", {**conf, "prevResult": res}, pod, cid="web")
    assert chk.rc == 0, chk.out


def test_masquerade_outside_but_not_inside_pod_network(world):
    client_srv = subprocess.Popen(["ip", "netns", "exec", world.client, sys.executable, APP, "serve",
                                   "outside", "9000"], stdout=subprocess.PIPE, text=True)
    world.servers.append(client_srv)
    assert ready_line(client_srv).strip() == "ready"
    a, _, _ = world.add_pod("a", [], ipMasq=True)
    b, _, res_b = world.add_pod("b", [], ipMasq=True)
    assert world.ask(a, "tcp", "192.0.2.1", 9000) == "outside 192.0.2.2"
    assert world.ask(a, "tcp", "2001:db8::1", 9000) == "outside 2001:db8::2"
    b_ip = res_b["ips"][0]["address"].split("/")[0]
    assert world.ask(a, "tcp", b_ip, 80) == "b 10.88.0.2"   # pod to pod keeps the pod address


def test_udp_goes_to_the_new_pod_after_replacement(world):
    mapping = [{"hostPort": 5353, "containerPort": 80, "protocol": "udp"}]
    old, conf, _ = world.add_pod("old", mapping)
    assert world.ask(world.client, "udp", "192.0.2.2", 5353, src_port=40000) == "old 192.0.2.1"
    assert world.node.pycni("DEL", {**conf, "runtimeConfig": {"portMappings": mapping}}, old, cid="old").rc == 0
    world.add_pod("new", mapping)
    assert world.ask(world.client, "udp", "192.0.2.2", 5353, src_port=40000) == "new 192.0.2.1"


def test_del_removes_exactly_that_containers_rules(world):
    mapping = lambda port: [{"hostPort": port, "containerPort": 80}]  # noqa: E731
    a, conf_a, res_a = world.add_pod("a", mapping(8080), ipMasq=True)
    b, conf_b, _ = world.add_pod("b", mapping(8090), ipMasq=True)
    before = dump_rules(world)
    assert "a" in comments(before) and "b" in comments(before)
    dele = world.node.pycni("DEL", {**conf_a, "runtimeConfig": {"portMappings": mapping(8080)},
                                    "prevResult": res_a}, a, cid="a")
    assert dele.rc == 0, dele.out
    after = dump_rules(world)
    assert "a" not in comments(after) and "b" in comments(after)
    assert world.ask(world.client, "tcp", "192.0.2.2", 8080) == ""
    assert world.ask(world.client, "tcp", "192.0.2.2", 8090) == "b 192.0.2.1"
    # DEL without any hint of the rules (no prevResult, no mappings) still finds them
    dele = world.node.pycni("DEL", {**conf_b}, b, cid="b")
    assert dele.rc == 0
    assert comments(dump_rules(world)) == set()


def dump_rules(world) -> str:
    n = world.node.name
    if world.backend == "nftables":
        return sh("nft", "list", "ruleset", ns=n)
    return sh("iptables-legacy-save", ns=n) + sh("ip6tables-legacy-save", ns=n)


def comments(text: str) -> set[str]:
    """Container ids named by pycni rule comments."""
    out = set()
    for part in text.split("pycni testnet/")[1:]:
        out.add(part.split("/")[0])
    return out


@pytest.mark.skipif(not (REFERENCE_DIR / "bridge").exists(), reason="reference plugins not installed")
def test_pycni_portmap_chained_after_reference_bridge(node):
    w = World(node, "nftables")
    try:
        pod = node.pod()
        plugin = netconf(node, "1.0.0", hairpinMode=True)
        plugin.update(type="bridge")
        plugin["ipam"]["type"] = "host-local"
        listfile = node.tmp / "chain.conflist"
        del plugin["cniVersion"], plugin["name"]
        listfile.write_text(json.dumps({"cniVersion": "1.0.0", "name": "testnet", "plugins": [
            plugin, {"type": "pycni-portmap", "capabilities": {"portMappings": True}}]}))
        run = ["ip", "netns", "exec", node.name, str(BIN / "pycni"), "exec"]
        opts = ["--cni-path", f"{BIN}:{REFERENCE_DIR}", "--cache-dir", str(node.tmp / "cache"),
                "--container-id", "chained"]
        rc = json.dumps({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        add = subprocess.run(run + ["add", str(listfile), f"/var/run/netns/{pod}", "--runtime-config", rc] + opts,
                             capture_output=True, text=True)
        assert add.returncode == 0, add.stdout + add.stderr
        srv = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, APP, "serve", "chained", "80"],
                               stdout=subprocess.PIPE, text=True)
        w.servers.append(srv)
        assert ready_line(srv).strip() == "ready"
        assert w.ask(w.client, "tcp", "192.0.2.2", 8080) == "chained 192.0.2.1"
        chk = subprocess.run(run + ["check", str(listfile), f"/var/run/netns/{pod}"] + opts,
                             capture_output=True, text=True)
        assert chk.returncode == 0, chk.stdout
        dele = subprocess.run(run + ["del", str(listfile), f"/var/run/netns/{pod}"] + opts,
                              capture_output=True, text=True)
        assert dele.returncode == 0, dele.stdout
        assert "pycni testnet" not in sh("nft", "list", "ruleset", ns=node.name)
    finally:
        w.close()


def test_concurrent_adds_keep_every_rule(world):
    """Parallel ADDs each commit a whole table (iptables) or a transaction (nftables): none may lose
    another's rules."""
    pods = [world.node.pod() for _ in range(8)]
    procs = []
    for i, pod in enumerate(pods):
        conf = {**world.conf(ipMasq=True), "runtimeConfig": {"portMappings": [
            {"hostPort": 9000 + i, "containerPort": 80}]}}
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"p{i}", "CNI_NETNS": f"/var/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "PYCNI_HELPER_SOCKET": str(world.node.tmp / "helper.sock")}
        p = subprocess.Popen(["ip", "netns", "exec", world.node.name, str(BIN / "pycni")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        p.stdin.write(json.dumps(conf).encode())
        p.stdin.close()
        procs.append(p)
    outs = [p.stdout.read() for p in procs]
    assert all(p.wait() == 0 for p in procs), outs
    assert comments(dump_rules(world)) == {f"p{i}" for i in range(8)}
    for i, pod in enumerate(pods):
        srv = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, APP, "serve", f"p{i}", "80"],
                               stdout=subprocess.PIPE, text=True)
        world.servers.append(srv)
        assert ready_line(srv).strip() == "ready"
    assert [world.ask(world.client, "tcp", "192.0.2.2", 9000 + i) for i in range(8)] == \
        [f"p{i} 192.0.2.1" for i in range(8)]


def test_auto_backend_follows_the_node(node):
    w = World(node, "auto")
    try:
        pod = node.pod()
        mapping = [{"hostPort": 8080, "containerPort": 80}]
        conf = {**w.conf(), "runtimeConfig": {"portMappings": mapping}}
        add = node.run(BIN / "pycni", "ADD", conf, pod, cid="auto1",
                       env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert add.rc == 0, add.out
        assert "pycni testnet/auto1" in sh("nft", "list", "ruleset", ns=node.name)   # a pure nftables node
        if DEV_BIN:   # a frozen build ignores PYTHON* variables
            assert "import time:" in add.stderr and " iptc" not in add.stderr   # python-iptables never imported
        # a node whose kube-proxy lives in legacy iptables
        sh("iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES", ns=node.name)
        pod2 = node.pod()
        assert node.pycni("ADD", {**conf}, pod2, cid="auto2").rc == 0
        assert "pycni testnet/auto2/eth0" in sh("iptables-legacy-save", "-t", "nat", ns=node.name)
        # teardown looks in both: DEL with the backend forced the other way still cleans up
        for cid, p in (("auto1", pod), ("auto2", pod2)):
            forced = {**conf, "backend": "iptables" if cid == "auto1" else "nftables"}
            assert node.pycni("DEL", forced, p, cid=cid).rc == 0
        assert "pycni testnet" not in sh("nft", "list", "ruleset", ns=node.name)
        assert "pycni testnet" not in sh("iptables-legacy-save", ns=node.name)
    finally:
        w.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gc_removes_rules_of_invalid_attachments(node, backend):
    w = World(node, backend)
    try:
        for cid in ("keep", "drop"):
            pod = node.pod()
            conf = {**w.conf(ipMasq=True, cniVersion="1.1.0"),
                    "runtimeConfig": {"portMappings": [{"hostPort": 8080 if cid == "keep" else 8081,
                                                        "containerPort": 80}]}}
            assert node.pycni("ADD", conf, pod, cid=cid).rc == 0
        gc = node.pycni("GC", {**w.conf(cniVersion="1.1.0"),
                               "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
        assert gc.rc == 0, gc.out
        assert comments(dump_rules(w)) == {"keep"}
    finally:
        w.close()


@pytest.mark.parametrize("add_by,del_by", [("exec", "exec"), ("library", "exec"), ("exec", "library")])
def test_nft_program_and_library_make_the_same_rules(node, add_by, del_by):
    """libnftables in process and the `nft` program (PYCNI_NFT=exec, or a node without the
    library) are one backend: either one's DEL removes what the other's ADD made."""
    env = {"exec": {"PYCNI_NFT": "exec"}, "library": {}}
    w = World(node, "nftables")
    try:
        pod = node.pod()
        conf = {**w.conf(), "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}
        res = node.pycni("ADD", conf, pod, cid="both", env=env[add_by])
        assert res.rc == 0, res.out
        ruleset = sh("nft", "list", "table", "inet", "pycni", ns=node.name)
        assert "pycni testnet/both/eth0" in ruleset and "8080" in ruleset
        assert node.pycni("CHECK", {**conf, "prevResult": res.out}, pod, cid="both", env=env[del_by]).rc == 0
        assert node.pycni("DEL", {**conf, "prevResult": res.out}, pod, cid="both", env=env[del_by]).rc == 0
        assert "pycni testnet" not in sh("nft", "list", "table", "inet", "pycni", ns=node.name)
    finally:
        w.close()


def test_two_mappings_of_one_host_port_in_one_add_the_first_wins(world):
    """A pod that maps the same protocol and host port twice (the fuzzer found nftables refusing
    the whole ADD with code 999): the first mapping serves, as the first DNAT rule does on
    iptables, and DEL leaves nothing."""
    pod, conf, res = world.add_pod("dup", [{"hostPort": 8080, "containerPort": 80},
                                           {"hostPort": 8080, "containerPort": 81}])
    assert world.ask(world.client, "tcp", "192.0.2.2", 8080) == "dup 192.0.2.1"
    assert world.node.pycni("CHECK", {**conf, "prevResult": res}, pod, cid="dup").rc == 0
    assert world.node.pycni("DEL", {**conf, "prevResult": res}, pod, cid="dup").rc == 0
    assert "pycni testnet/dup" not in dump_rules(world)
