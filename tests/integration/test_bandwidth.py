"""Traffic shaping per pod, measured with iperf3, side by side with the reference `bandwidth`.

Three ways to the same shaping, each on the same checks: pycni with the `bandwidth` capability
(one exec), the reference `bridge` chained with `pycni-bandwidth`, and the reference `bridge`
chained with the reference `bandwidth` (Debian's containernetworking-plugins 1.1.1).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from .conftest import BIN, REFERENCE_DIR, TIMEOUT, netconf, sh

pytestmark = pytest.mark.skipif(not (REFERENCE_DIR / "bandwidth").exists() or not shutil.which("iperf3"),
                                reason="reference plugins or iperf3 not installed")

INGRESS, EGRESS = 20_000_000, 10_000_000          # bits/s towards the pod, from it
BURST = 400_000                                   # bits: 50 kB, a few packets beyond an MTU
SHAPED = {"ingressRate": INGRESS, "ingressBurst": BURST, "egressRate": EGRESS, "egressBurst": BURST}
WAYS = ["pycni", "bridge+pycni-bandwidth", "bridge+bandwidth"]


def _chain(way: str) -> list[tuple[str, str]]:
    """(executable, config type) of each plugin of the chain, in ADD order."""
    return {"pycni": [(str(BIN / "pycni"), "pycni")],
            "bridge+pycni-bandwidth": [(str(REFERENCE_DIR / "bridge"), "bridge"),
                                       (str(BIN / "pycni-bandwidth"), "bandwidth")],
            "bridge+bandwidth": [(str(REFERENCE_DIR / "bridge"), "bridge"),
                                 (str(REFERENCE_DIR / "bandwidth"), "bandwidth")]}[way]


class Chain:
    """A conflist of one network run as libcni runs it: ADD in order with prevResult, DEL in
    reverse, runtimeConfig.bandwidth given to the plugins (all of them declare the capability)."""

    def __init__(self, node, way: str, name: str = "bwnet", subnet: str = "10.66.0.0/24"):
        self.node, self.way = node, way
        base = netconf(node, name=name, subnet=subnet)
        ipam = {**base["ipam"], "type": "host-local"} if way != "pycni" else base["ipam"]
        self.plugins = []
        for exe, kind in _chain(way):
            conf = {k: v for k, v in base.items() if k not in ("type", "ipam")}
            if kind in ("pycni", "bridge"):
                conf.update(type=kind, ipam=ipam)
            else:
                conf = {"cniVersion": base["cniVersion"], "name": name, "type": "bandwidth"}
            self.plugins.append((exe, conf))
        self.results: dict[str, dict] = {}

    def _conf(self, conf: dict, bandwidth: dict | None, prev: dict | None, static: dict | None = None) -> dict:
        conf = {**conf, **(static or {})}
        if bandwidth is not None:
            conf["runtimeConfig"] = {"bandwidth": bandwidth}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def add(self, pod: str, cid: str, bandwidth: dict | None = SHAPED, static: dict | None = None):
        prev = None
        for exe, conf in self.plugins:
            last = conf["type"] == "bandwidth" or len(self.plugins) == 1
            call = self.node.run(exe, "ADD", self._conf(conf, bandwidth, prev, static if last else None), pod, cid=cid)
            if call.rc != 0:
                return call
            prev = call.out
        self.results[cid] = prev
        return call

    def check(self, pod: str, cid: str, bandwidth: dict | None = SHAPED):
        for exe, conf in self.plugins:
            call = self.node.run(exe, "CHECK", self._conf(conf, bandwidth, self.results[cid]), pod, cid=cid)
            if call.rc != 0:
                return call
        return call

    def delete(self, pod: str, cid: str, bandwidth: dict | None = SHAPED):
        for exe, conf in reversed(self.plugins):
            call = self.node.run(exe, "DEL", self._conf(conf, bandwidth, self.results.get(cid)), pod, cid=cid)
            assert call.rc == 0, (exe, call.out)


def ip_of(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def iperf(client_ns: str, server_ns: str, server_ip: str, reverse: bool) -> float:
    """Bits/s the client's pod sends (or, reverse, receives) over 4 s of TCP, the first second
    (the burst and TCP's start) left out."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if sh("ss", "-ltn", ns=server_ns).find(":5201") >= 0:
                break
            subprocess.run(["sleep", "0.1"])
        out = sh("iperf3", "-c", server_ip, "-t", "4", "-O", "1", "-J", *(["-R"] if reverse else []), ns=client_ns)
    finally:
        server.kill()
        server.wait(TIMEOUT)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"]


def qdiscs(node) -> str:
    return node.sh("tc", "qdisc", "show")


def ifbs(node) -> list[str]:
    return re.findall(r"^\d+: (\S+?)[:@]", node.sh("ip", "-o", "link", "show", "type", "ifb"), re.M)


@pytest.mark.parametrize("way", WAYS)
def test_rates_within_range_unshaped_pod_unshaped_del_leaves_nothing(node, way):
    chain = Chain(node, way)
    shaped_pod, plain_pod = node.pod(), node.pod()
    add = chain.add(shaped_pod, "shaped")
    assert add.rc == 0, add.out
    if way != "bridge+bandwidth":
        assert [i["name"] for i in add.out["interfaces"] if i["name"].startswith("pbw")], add.out
    assert chain.add(plain_pod, "plain", bandwidth=None).rc == 0
    assert chain.check(shaped_pod, "shaped").rc == 0
    plain_ip = ip_of(chain.results["plain"])

    egress = iperf(shaped_pod, plain_pod, plain_ip, reverse=False)     # from the shaped pod
    ingress = iperf(shaped_pod, plain_pod, plain_ip, reverse=True)     # towards it
    assert 0.8 * EGRESS <= egress <= 1.15 * EGRESS, f"{way}: egress {egress / 1e6:.2f} Mbit/s"
    assert 0.8 * INGRESS <= ingress <= 1.15 * INGRESS, f"{way}: ingress {ingress / 1e6:.2f} Mbit/s"
    # the pod without shaping is not held to either rate, and has no qdisc or ifb of its own
    gateway = chain.results["plain"]["ips"][0]["gateway"]
    for reverse in (False, True):
        plain = iperf(plain_pod, node.name, gateway, reverse=reverse)
        assert plain > 3 * INGRESS, f"{way}: unshaped pod at {plain / 1e6:.2f} Mbit/s"
    assert qdiscs(node).count(" tbf ") == 2 and len(ifbs(node)) == 1, qdiscs(node)

    chain.delete(shaped_pod, "shaped")
    assert " tbf " not in qdiscs(node) and "ingress" not in qdiscs(node)
    assert ifbs(node) == []
    chain.delete(plain_pod, "plain", bandwidth=None)


BAD = [
    ({"ingressRate": 1000}, "if rate is set, burst must also be set"),
    ({"egressBurst": 1000}, "if burst is set, rate must also be set"),
    ({"egressRate": 1000, "egressBurst": 34359738360}, "burst cannot be more than 4GB"),
    ({"ingressRate": -1, "ingressBurst": 10}, "failed to parse network configuration"),
    ({"ingressRate": 1.5, "ingressBurst": 10}, "failed to parse network configuration"),
    ({"ingressRate": "1000", "ingressBurst": 10}, "failed to parse network configuration"),
    ({"ingressRate": 1 << 64, "ingressBurst": 10}, "failed to parse network configuration"),
]


@pytest.mark.parametrize("bandwidth, message", BAD, ids=[m[:24] + str(i) for i, (_, m) in enumerate(BAD)])
@pytest.mark.parametrize("way", WAYS)
def test_bad_values_refused_with_the_references_code_nothing_left(node, way, bandwidth, message):
    chain = Chain(node, way)
    pod = node.pod()
    before = node.sh("ip", "-o", "link", "show")
    call = chain.add(pod, "bad", bandwidth=bandwidth)
    assert call.rc != 0 and call.code == 999, call.out
    assert call.out["msg"].startswith(message), call.out
    if way == "pycni":      # refused before anything was made (the chains' bridge has made its veth)
        assert node.sh("ip", "-o", "link", "show") == before
        assert node.reservations("bwnet") == []
    assert " tbf " not in qdiscs(node) and ifbs(node) == []


@pytest.mark.parametrize("way", WAYS)
def test_static_rates_in_the_config_win_over_the_capability(node, way):
    chain = Chain(node, way)
    pod = node.pod()
    static = {"ingressRate": 8_000_000, "ingressBurst": BURST}
    assert chain.add(pod, "static", bandwidth=SHAPED, static=static).rc == 0
    out = qdiscs(node)
    assert out.count(" tbf ") == 1 and "rate 8Mbit" in out, out        # ingress only, the static rate
    assert ifbs(node) == []
    chain.delete(pod, "static")
    assert " tbf " not in qdiscs(node)


@pytest.mark.parametrize("way", ["pycni", "bridge+pycni-bandwidth"])
def test_check_sees_a_removed_qdisc(node, way):
    chain = Chain(node, way)
    pod = node.pod()
    assert chain.add(pod, "c").rc == 0
    ifb = ifbs(node)[0]
    node.sh("tc", "qdisc", "del", "dev", ifb, "root")
    call = chain.check(pod, "c")
    assert call.rc != 0 and "egress shaping differs" in call.out["msg"], call.out
    chain.delete(pod, "c")
    assert ifbs(node) == []


@pytest.mark.parametrize("way", ["pycni", "bridge+pycni-bandwidth"])
def test_gc_removes_the_ifb_of_a_gone_attachment_only(node, way):
    chain = Chain(node, way)
    kept, gone = node.pod(), node.pod()
    assert chain.add(kept, "kept").rc == 0 and chain.add(gone, "gone").rc == 0
    assert len(ifbs(node)) == 2
    exe, conf = chain.plugins[-1]
    gc_conf = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "kept", "ifname": "eth0"}]}
    call = node.run(exe, "GC", gc_conf)
    assert call.rc == 0, call.out
    assert ifbs(node) == [_ifb_of(chain.results["kept"])]
    chain.delete(kept, "kept")
    chain.delete(gone, "gone")
    assert ifbs(node) == []


def _ifb_of(result: dict) -> str:
    return [i["name"] for i in result["interfaces"] if i["name"].startswith("pbw")][0]


def test_chained_del_removes_the_filter_and_qdiscs_it_made_from_another_plugins_veth(node):
    """pycni-bandwidth's DEL runs before the interface plugin's: the reference bridge's veth is
    still there, and keeps none of pycni's qdiscs or filters."""
    chain = Chain(node, "bridge+pycni-bandwidth")
    pod = node.pod()
    assert chain.add(pod, "c").rc == 0
    veth = [i["name"] for i in chain.results["c"]["interfaces"] if not i.get("sandbox") and i["name"].startswith("veth")][0]
    exe, conf = chain.plugins[-1]
    assert node.run(exe, "DEL", {**conf, "prevResult": chain.results["c"]}, pod, cid="c").rc == 0
    assert node.sh("tc", "qdisc", "show", "dev", veth).count("tbf") == 0
    assert "ingress" not in node.sh("tc", "qdisc", "show", "dev", veth)
    assert ifbs(node) == []
    chain.delete(pod, "c")


def _tool(node, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", "netns", "exec", node.name, str(BIN / "pycni"), *args, "--conf-dir",
                        str(node.tmp / "net.d")], capture_output=True, text=True, timeout=TIMEOUT)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_inspect_shows_the_shaping_and_a_leaked_ifb_and_explain_names_the_tbfs(node):
    chain = Chain(node, "pycni")
    conf = {k: v for k, v in chain.plugins[0][1].items() if k not in ("cniVersion", "name")}
    (node.tmp / "net.d").mkdir()
    (node.tmp / "net.d" / "10-bwnet.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "bwnet", "plugins": [{**conf, "capabilities": {"bandwidth": True}}]}))
    shaped_pod, plain_pod = node.pod(), node.pod()
    assert chain.add(shaped_pod, "shaped").rc == 0 and chain.add(plain_pod, "plain", bandwidth=None).rc == 0
    p = _tool(node, "inspect", "--json", "--check")
    assert p.returncode == 0, p.stdout
    atts = {a["container_id"]: a for a in json.loads(p.stdout)["attachments"]}
    assert (atts["shaped"]["ingress_rate"], atts["shaped"]["egress_rate"]) == (INGRESS, EGRESS)
    assert atts["shaped"]["ifb"] == _ifb_of(chain.results["shaped"])
    assert (atts["plain"]["ingress_rate"], atts["plain"]["egress_rate"], atts["plain"]["ifb"]) == (0, 0, "")
    table = _tool(node, "inspect").stdout
    assert "in 20Mbit/s, out 10Mbit/s" in table, table

    shaped_ip, plain_ip = ip_of(chain.results["shaped"]), ip_of(chain.results["plain"])
    out = json.loads(_tool(node, "explain", "shaped", f"{plain_ip}:80/tcp", "--json").stdout)
    assert any("tbf (7063:) holds the pod's egress to 10Mbit/s" in h for h in out["hops"]), out["hops"]
    out = json.loads(_tool(node, "explain", "plain", f"{shaped_ip}:80/tcp", "--json").stdout)
    assert any("through its tbf (7063:) at 20Mbit/s" in h for h in out["hops"]), out["hops"]
    assert not any("egress" in h for h in out["hops"]), out["hops"]         # the unshaped pod's own side

    # a leaked ifb (its attachment gone) is a problem `--check` reports
    node.sh("ip", "link", "add", "pbwdeadbeef012", "type", "ifb")
    node.sh("ip", "link", "set", "pbwdeadbeef012", "alias", "pycni-bw/bwnet/ghost/eth0")
    p = _tool(node, "inspect", "--json", "--check")
    assert p.returncode == 1 and any("ifb without interface: pbwdeadbeef012" in x
                                     for x in json.loads(p.stdout)["problems"]), p.stdout
    chain.delete(shaped_pod, "shaped")
    chain.delete(plain_pod, "plain", bandwidth=None)


@pytest.mark.parametrize("way", ["pycni", "bridge+pycni-bandwidth"])
def test_del_finishes_whatever_the_rates_say_now(node, way):
    """DEL never refuses a config (the reference's DEL answers 999 to rates ADD would refuse, and
    leaves its ifb): the ifb and qdiscs go, whether DEL's rates are bad, absent or different."""
    chain = Chain(node, way)
    pods = [node.pod() for _ in range(3)]
    for i, pod in enumerate(pods):
        assert chain.add(pod, f"d{i}").rc == 0
    assert len(ifbs(node)) == 3
    chain.delete(pods[0], "d0", bandwidth={"ingressRate": 1000})
    chain.delete(pods[1], "d1", bandwidth=None)
    chain.delete(pods[2], "d2", bandwidth={"ingressRate": 1000, "ingressBurst": 800})
    assert ifbs(node) == [] and " tbf " not in qdiscs(node) and "ingress" not in qdiscs(node)
