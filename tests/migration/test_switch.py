"""A live node switches from the reference plugins (bridge + host-local + portmap 1.1.1, Debian's
containernetworking-plugins in /usr/lib/cni) to pycni, and back, the way an operator does it: pods
running, the conflist's types changed, the runtime's cached results (`pycni exec --cache-dir`, as
libcni) handed to the new plugins' DEL and CHECK.

Topology: a client namespace (192.0.2.1) -- uplink -- the node namespace (192.0.2.2), pods on the
node's bridge tbr0 (10.88.0.0/24), each with a server that answers "<pod name> <peer>".
Forms: pycni chained ([pycni, pycni-portmap], the reference's own shape) and single-plugin
([pycni] with the portMappings capability); pycni's firewall on nftables and on legacy iptables;
the reference's iptables rules in iptables-nft (Debian's default `iptables`) or in legacy iptables
(its `iptables` pointed at iptables-legacy through PATH).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, REFERENCE_DIR, ready_line, sh
from tests.integration.test_portmap import APP, World

pytestmark = pytest.mark.skipif(not (REFERENCE_DIR / "portmap").exists(), reason="reference plugins not installed")

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ("iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore")


class Switch:
    def __init__(self, node, form: str, backend: str, flavour: str):
        self.node, self.form, self.backend, self.flavour = node, form, backend, flavour
        self.world = World(node, backend)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        if flavour == "legacy":     # the reference's go-iptables runs the first `iptables` in PATH
            shim = node.tmp / "legacy-bin"
            shim.mkdir()
            for name in LEGACY:
                os.symlink(shutil.which(name.replace("tables", "tables-legacy", 1)), shim / name)
            self.env["PATH"] = f"{shim}:{self.env.get('PATH', '/usr/sbin:/usr/bin')}"
        self.servers = self.world.servers
        self.results: dict[str, dict] = {}
        self.pods: dict[str, str] = {}
        self.lists = {"reference": self._write("reference"), "pycni": self._write("pycni"),
                      "pycni-1.0.0": self._write("pycni", "1.0.0")}

    def _write(self, kind: str, version: str = "1.1.0"):
        ipam = {"dataDir": str(self.node.data_dir), "ranges": [[{"subnet": "10.88.0.0/24"}]]}
        bridge = {"bridge": "tbr0", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
                  "hairpinMode": True}
        if kind == "reference":
            plugins = [{"type": "bridge", **bridge, "ipam": {"type": "host-local", **ipam}},
                       {"type": "portmap", "capabilities": {"portMappings": True}}]
        else:
            ours = {"type": "pycni", **bridge, "backend": self.backend, "logFile": str(self.node.log_file),
                    "ipam": {"type": "pycni-ipam", **ipam}}
            if self.form == "chained":
                plugins = [ours, {"type": "pycni-portmap", "backend": self.backend,
                                  "capabilities": {"portMappings": True}}]
            else:
                plugins = [{**ours, "capabilities": {"portMappings": True}}]
        # the reference speaks CNI up to 1.0.0; GC needs 1.1.0
        version = "1.0.0" if kind == "reference" else version
        path = self.node.tmp / f"{kind}-{version}.conflist"
        path.write_text(json.dumps({"cniVersion": version, "name": "testnet", "plugins": plugins}))
        return path

    def exec(self, verb: str, kind: str, cid: str, mappings=None, args: str = "", valid=()) -> subprocess.CompletedProcess:
        cmd = ["ip", "netns", "exec", self.node.name, str(BIN / "pycni"), "exec", verb, str(self.lists[kind])]
        if verb != "gc":
            cmd.append(f"/var/run/netns/{self.pods[cid]}")
        cmd += ["--cni-path", f"{BIN}:{REFERENCE_DIR}", "--cache-dir", str(self.node.tmp / "cache"),
                "--container-id", cid]
        if mappings is not None:
            cmd += ["--runtime-config", json.dumps({"portMappings": mappings})]
        if args:
            cmd += ["--args", args]
        for v in valid:
            cmd += ["--valid", f"{v}/eth0"]
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=120)

    def delete_retried(self, kind: str, cid: str) -> None:
        """DEL as a runtime does it: once more if the first one failed; the second must succeed."""
        out = self.exec("del", kind, cid)
        if out.returncode != 0:
            out = self.exec("del", kind, cid)
        assert out.returncode == 0, out.stdout + out.stderr

    def add(self, kind: str, cid: str, host_port: int, ip: str = "") -> str:
        """ADD pod `cid` with host port `host_port` -> 80, its server started; its address."""
        self.pods[cid] = self.node.pod()
        out = self.exec("add", kind, cid, [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}],
                        args=f"IgnoreUnknown=1;IP={ip}" if ip else "")
        assert out.returncode == 0, out.stdout + out.stderr
        self.results[cid] = json.loads(out.stdout)
        proc = subprocess.Popen(["ip", "netns", "exec", self.pods[cid], sys.executable, APP, "serve", cid, "80"],
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert ready_line(proc).strip() == "ready"
        return self.address(cid)

    def address(self, cid: str) -> str:
        return self.results[cid]["ips"][0]["address"].split("/")[0]

    def host_end(self, cid: str) -> str:
        return next(i["name"] for i in self.results[cid]["interfaces"] if i["name"] != "tbr0" and "sandbox" not in i)

    def ask(self, port: int) -> str:
        """What answers on the node's host port `port` from outside ('' if nothing does)."""
        return self.world.ask(self.world.client, "tcp", "192.0.2.2", port)

    def iptables_rules(self) -> str:
        """Every iptables rule of the node: iptables-nft's tables and the legacy ones."""
        n = self.node.name
        return "".join(sh(prog, ns=n) for prog in ("iptables-nft-save", "ip6tables-nft-save",
                                                   "iptables-legacy-save", "ip6tables-legacy-save"))

    def pycni_rules(self) -> str:
        n = self.node.name
        return sh("nft", "list", "ruleset", ns=n) + sh("iptables-legacy-save", ns=n)

    def neighbour(self, ip: str) -> str:
        return sh("ip", "neigh", "show", "to", ip, "dev", "tbr0", ns=self.node.name).strip()

    def ping(self, src_ns: str, ip: str) -> bool:
        return subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-c1", "-W2", ip],
                              capture_output=True).returncode == 0


def reference_chains(cid: str) -> list[str]:
    from cni.firewall.reference import chain_names

    return list(chain_names("testnet", cid)[:2])


@pytest.fixture(params=["chained", "single"])
def form(request):
    return request.param


@pytest.fixture
def switch(node, form, request):
    backend, flavour = request.param
    s = Switch(node, form, backend, flavour)
    try:
        yield s
    finally:
        s.world.close()


PAIRS = [("nftables", "nft"), ("iptables", "legacy"), ("nftables", "legacy"), ("iptables", "nft")]


@pytest.mark.parametrize("switch", PAIRS, indirect=True, ids=[f"pycni-{b}-reference-{f}" for b, f in PAIRS])
def test_reference_pods_under_pycni(switch):
    s = switch
    a = s.add("reference", "a", 8080)
    s.add("reference", "b", 8081)
    assert s.ask(8080) == "a 192.0.2.1" and s.ask(8081) == "b 192.0.2.1"
    assert s.ping(s.node.name, a) and s.neighbour(a)        # the node has a's neighbour entry
    chains = reference_chains("a")
    assert all(c in s.iptables_rules() for c in chains)     # the names are the reference's

    # the conflist now says pycni; a pycni pod beside the reference's, the two talk
    s.add("pycni", "c", 8082)
    assert s.ask(8082) == "c 192.0.2.1"
    assert s.ping(s.pods["c"], a)

    # 1: CHECK through pycni recognises the reference's attachment and checks what is there
    chk = s.exec("check", "pycni", "a")
    assert chk.returncode == 0, chk.stdout + chk.stderr
    # ... and what is not: under another network name the reference's chains would have other names
    other = json.loads(s.lists["pycni"].read_text())
    other["name"] = "othernet"
    s.lists["other"] = s.node.tmp / "other.conflist"
    s.lists["other"].write_text(json.dumps(other))
    cache = s.node.tmp / "cache"
    for f in cache.glob("**/testnet-a-eth0"):
        shutil.copy(f, f.with_name("othernet-a-eth0"))
    chk = s.exec("check", "other", "a")
    assert chk.returncode != 0 and "firewall rule missing" in chk.stdout, chk.stdout + chk.stderr

    # 2, 3: DEL through pycni removes the reference's veth pair, rules and chains
    dele = s.exec("del", "pycni", "a")
    assert dele.returncode == 0, dele.stdout + dele.stderr
    assert s.host_end("a") not in s.node.links()
    assert "eth0" not in sh("ip", "-o", "link", "show", ns=s.pods["a"])
    rules = s.iptables_rules()
    assert 'id: \\"a\\"' not in rules and 'id: "a"' not in rules, rules
    assert not any(c in rules for c in chains), rules
    assert s.neighbour(a) == ""                             # flushed: the next owner is reached at once
    # 4: nothing on the node forwards to the released address, before and after it is reused
    assert s.ask(8080) == ""
    assert s.add("pycni", "d", 8083, ip=a) == a
    assert s.ask(8083) == "d 192.0.2.1"
    assert s.ask(8080) == ""
    assert s.ask(8081) == "b 192.0.2.1"                     # the other reference pod keeps its port

    # a DEL without the runtime's capability args (issue 28 row 7) still removes all of b's
    s.results.pop("b")
    shutil.rmtree(s.node.tmp / "cache", ignore_errors=True)  # no cached result: no prevResult, no mappings
    dele = s.exec("del", "pycni", "b")
    assert dele.returncode == 0, dele.stdout + dele.stderr
    rules = s.iptables_rules()
    assert 'id: \\"b\\"' not in rules and 'id: "b"' not in rules, rules
    assert s.ask(8081) == ""
    for cid in ("c", "d"):
        assert s.exec("del", "pycni", cid).returncode == 0
    assert s.exec("gc", "pycni", "").returncode == 0
    assert "pycni testnet/" not in s.pycni_rules()
    assert "CNI-DN-" not in s.iptables_rules() and s.node.reservations("testnet") == []


@pytest.mark.parametrize("switch", PAIRS[:2], indirect=True, ids=[f"pycni-{b}-reference-{f}" for b, f in PAIRS[:2]])
def test_back_to_the_reference_then_one_gc(switch):
    """5: pycni's pods, the conflist back to the reference: what docs/operations.md says holds."""
    s = switch
    # pods made under a 1.0.0 conflist: `pycni exec`, unlike libcni, hands DEL the cached result in
    # the version it was made in, and the reference reads no 1.1.0 result
    p = s.add("pycni-1.0.0", "p", 8090)
    s.add("pycni-1.0.0", "q", 8091)
    assert s.ask(8090) == "p 192.0.2.1"
    s.add("reference", "r", 8092)       # a reference pod after the switch back
    assert s.ask(8092) == "r 192.0.2.1" and s.ask(8091) == "q 192.0.2.1"

    # the reference's DEL of a pycni pod: its first portmap DEL may fail on pycni's pods (the
    # reference's chain does not exist); the runtime retries, and the retry succeeds
    dele = s.exec("del", "reference", "p")
    if dele.returncode != 0:    # iptables-nft: "Chain ... does not exist"; legacy: "Couldn't load target"
        assert "CNI-" in dele.stdout and ("does not exist" in dele.stdout or "load target" in dele.stdout), dele.stdout
        dele = s.exec("del", "reference", "p")
    assert dele.returncode == 0, dele.stdout + dele.stderr
    assert "pycni testnet/p/" in s.pycni_rules()     # pycni's elements of p stay: the reference cannot see them

    # the one command after a switch back: GC through pycni's conflist with the runtime's live pods
    gc = s.exec("gc", "pycni", "", valid=("q", "r"))
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert "pycni testnet/p/" not in s.pycni_rules()
    assert s.ask(8090) == ""
    assert s.add("reference", "t", 8093, ip=p) == p     # p's address to another pod
    # the node still holds p's neighbour entry (the reference's DEL leaves it): t is reached once
    # it has spoken, or after the entry ages out
    assert s.ping(s.pods["t"], "10.88.0.1")
    assert s.ask(8090) == "" and s.ask(8093) == "t 192.0.2.1"
    assert s.ask(8091) == "q 192.0.2.1" and s.ask(8092) == "r 192.0.2.1"   # live pods untouched
    assert sorted(s.node.reservations("testnet")) == sorted([s.address("q"), s.address("r"), p])
    for cid in ("q", "r", "t"):
        s.delete_retried("reference", cid)


AGENT_ROUND = ("import sys; from cni.agent import gc; "
               "gc.Collector(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], every=300, grace=120).round()")


@pytest.mark.parametrize("switch", PAIRS[:2], indirect=True, ids=[f"pycni-{b}-reference-{f}" for b, f in PAIRS[:2]])
def test_back_to_the_reference_the_agents_own_gc_round_cleans_up(switch):
    """5, with the agent: the runtime now uses the reference's conflist (sorting before the agent's,
    which the agent keeps writing); the agent's GC round, as its thread runs it every --gc-every
    seconds, asks the runtime's CRI which pods live and removes what pycni left of the pod the
    reference deleted, with no one running a command."""
    s = switch
    p = s.add("pycni-1.0.0", "p", 8090)
    s.add("pycni-1.0.0", "q", 8091)
    s.add("reference", "r", 8092)
    s.delete_retried("reference", "p")     # its first DEL of a pycni pod may fail (see above)
    assert "pycni testnet/p/" in s.pycni_rules()        # left behind: what the round must remove

    sock = s.node.tmp / "cri.sock"
    env = {**s.env, "PYTHONPATH": str(ROOT)}
    runtime = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_cri.py"), str(sock), "q", "r"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert ready_line(runtime).strip() == "ready"
        done = subprocess.run(["ip", "netns", "exec", s.node.name, sys.executable, "-c", AGENT_ROUND,
                               str(s.lists["pycni"]), str(BIN), str(sock), str(s.node.tmp / "helper.sock")],
                              capture_output=True, text=True, env=env, timeout=120)
    finally:
        runtime.stdin.close()
        runtime.wait(10)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"agent: gc: 0 stale attachments, 0 kept for their age; reclaimed 0 addresses, "
                        r"[1-9]\d* firewall rules, 0 interfaces", summary), done.stdout + done.stderr
    assert "pycni testnet/p/" not in s.pycni_rules()
    assert s.ask(8090) == ""
    assert s.add("reference", "t", 8093, ip=p) == p     # p's address to another pod: its old port says nothing
    assert s.ask(8090) == "" and s.ask(8093) == "t 192.0.2.1"
    assert s.ask(8091) == "q 192.0.2.1" and s.ask(8092) == "r 192.0.2.1"   # the live pods untouched
    assert sorted(s.node.reservations("testnet")) == sorted([s.address("q"), s.address("r"), p])
    for cid in ("q", "r", "t"):
        s.delete_retried("reference", cid)
