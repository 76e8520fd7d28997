"""NetworkPolicy enforced by `pycni agent`, probed with real traffic: the multi-node simulation
(two node namespaces on an underlay), an agent in each node talking to a fake API server over
HTTP, namespaces x, y, z with pods a, b, c spread over both nodes, each
pod serving TCP and UDP on ports 80 and 81. Every case probes every pair on every port and
compares with a truth table written out by hand from the Kubernetes semantics (the cases mirror
test/e2e/network/netpol/network_policy.go upstream)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.k8s_api import FakeAPI

from .cluster import NODES, OUTSIDE4, Cluster, api_node
from .conftest import node, ready_line  # noqa: F401  (node: the fixture)

APP = str(Path(__file__).with_name("netpol_app.py"))
NAMESPACES = ("x", "y", "z")
PLACES = {"x/a": "node-a", "x/b": "node-b", "x/c": "node-a", "y/a": "node-b", "y/b": "node-a",
          "y/c": "node-b", "z/a": "node-a", "z/b": "node-b", "z/c": "node-a"}
PORTS = ((80, "tcp"), (81, "tcp"), (80, "udp"), (81, "udp"))
DENIED_WAIT = 0.6      # seconds a probe waits for an answer: a dropped packet gets none


def pod_object(key: str, node: str, ips=(), labels: dict | None = None, web: int | None = None) -> dict:
    """`web`: one more container port, named "web", on that number."""
    ns, name = key.split("/")
    containers = [{"name": f"c{port}-{proto}", "image": "agnhost",
                   "ports": [{"name": f"serve-{port}-{proto}", "containerPort": port,
                              "protocol": proto.upper()}]} for port, proto in PORTS]
    if web:
        containers.append({"name": "web", "image": "agnhost", "ports": [{"name": "web", "containerPort": web}]})
    status = {"phase": "Running"}
    if ips:
        status.update(podIP=str(ips[0]), podIPs=[{"ip": str(ip)} for ip in ips])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": labels or {"pod": name}},
            "spec": {"nodeName": node, "containers": containers}, "status": status}


def namespace_object(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"ns": name, "kubernetes.io/metadata.name": name,
                                                  **(labels or {})}}}


def policy(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name}, "spec": spec}


class World:
    def __init__(self, tmp: Path):
        self.cluster = Cluster(tmp)
        self.api = FakeAPI(OUTSIDE4, netns=self.cluster.underlay)
        for name in NODES:
            self.api.put("nodes", api_node(name))
        for ns in NAMESPACES:
            self.api.put("namespaces", namespace_object(ns))
        for key, node in PLACES.items():
            self.api.put("pods", pod_object(key, node))
        self.kubeconfig = self.api.kubeconfig(tmp / "kubeconfig")
        self.agents = {name: self.cluster.start_agent(name, self.kubeconfig) for name in NODES}
        for agent in self.agents.values():
            agent.wait_for("agent: network policy:")
            agent.wait_for("conflist written")
        self.pods: dict[str, tuple[str, list]] = {}      # key: (pod netns, addresses)
        for key, node in PLACES.items():
            self.add(key, node)
        self.settle()
        self.policies: set[tuple[str, str]] = set()

    def add(self, key: str, node: str, publish: bool = True, serve: bool = True, ip: str | None = None,
            labels: dict | None = None) -> tuple[str, list]:
        pod, result = self.cluster.add_pod(node, f"cid-{key.replace('/', '-')}", tuple(key.split("/")), ip)
        ips = [ipaddress.ip_interface(ip["address"]).ip for ip in result["ips"]]
        self.pods[key] = (pod, ips)
        if serve:
            srv = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, APP, "serve", key, "80", "81"],
                                   stdout=subprocess.PIPE, text=True)
            self.cluster.servers.append(srv)
            assert ready_line(srv).strip() == "ready"
        if publish:      # what kubelet does after the ADD returned
            self.api.put("pods", pod_object(key, node, ips, labels))
        return pod, ips

    def syncs(self) -> dict[str, int]:
        return {n: a.count("agent: network policy:") for n, a in self.agents.items()}

    def settle(self, before: dict[str, int] | None = None, quiet: float = 0.3) -> None:
        """Wait until every agent synced after the last change and then stayed quiet."""
        if before is not None:
            for n, a in self.agents.items():
                a.wait_for("agent: network policy:", before[n] + 1)
        while True:
            seen = self.syncs()
            time.sleep(quiet)
            if self.syncs() == seen:
                return

    def change(self, fn, *args) -> None:
        before = self.syncs()
        fn(*args)
        self.settle(before)
        self.forget_flows()

    def forget_flows(self) -> None:
        """Connections allowed before a change stay allowed (conntrack), as in most
        implementations; a UDP probe reusing a source port of an earlier one within 30 s would
        be such a connection. Each case probes new connections only."""
        for node in self.cluster.nodes.values():
            node.sh("conntrack", "-F", check=False)

    def apply(self, *objects: dict) -> None:
        before = self.syncs()
        for obj in objects:
            self.api.put("networkpolicies", obj)
            self.policies.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
        self.settle(before)
        self.forget_flows()

    def clear(self) -> None:
        if self.policies:
            before = self.syncs()
            for ns, name in self.policies:
                self.api.delete("networkpolicies", ns, name)
            self.policies.clear()
            self.settle(before)
            self.forget_flows()

    def probe(self, family: int = 4, sources=None, targets=None) -> dict:
        """{(src, dst, port, proto): answered} for every pair."""
        sources, targets = sources or list(PLACES), targets or list(PLACES)
        jobs = {}
        for src in sources:
            plan = [(dst, port, proto) for dst in targets for port, proto in PORTS]
            addrs = [[str(next(ip for ip in self.pods[dst][1] if ip.version == family)), port, proto]
                     for dst, port, proto in plan]
            jobs[src] = (plan, subprocess.Popen(
                ["ip", "netns", "exec", self.pods[src][0], sys.executable, APP, "probe", str(DENIED_WAIT),
                 json.dumps(addrs)], stdout=subprocess.PIPE, text=True))
        out = {}
        for src, (plan, proc) in jobs.items():
            answers = json.loads(proc.communicate(timeout=60)[0])
            for (dst, port, proto), answer in zip(plan, answers):
                assert answer in ("", dst), f"{src} -> {dst}: answered by {answer!r}"
                out[(src, dst, port, proto)] = answer == dst
        return out

    def close(self) -> None:
        try:
            for a in self.agents.values():
                a.stop()
            self.api.close()
        finally:
            self.cluster.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("netpol"))
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def w(world):
    """The world, with every policy of the test deleted afterwards (and traffic back to open)."""
    yield world
    world.clear()


def check(w: World, expect, family: int = 4, **kw) -> None:
    """Probe every pair; a pod always reaches itself (its own address is its loopback: no policy
    applies, as upstream's truth tables say with AllowLoopback)."""
    rule = expect
    expect = lambda s, d, port, proto: s == d or rule(s, d, port, proto)  # noqa: E731
    got = w.probe(family, **kw)
    wrong = [f"  {s} -> {d} {port}/{proto}: {'allowed' if ok else 'denied'}, expected "
             f"{'allowed' if expect(s, d, port, proto) else 'denied'}"
             for (s, d, port, proto), ok in sorted(got.items()) if ok != bool(expect(s, d, port, proto))]
    assert not wrong, f"{len(wrong)} of {len(got)} probes wrong (IPv{family}):\n" + "\n".join(wrong[:40])


def ns(key: str) -> str:
    return key.split("/")[0]


def everything(s, d, port, proto) -> bool:
    return True


# ---------------------------------------------------------------------------- the cases


def test_without_policies_every_pair_talks(w):
    check(w, everything)


def test_default_deny_ingress_isolates_the_namespace(w):
    w.apply(policy("x", "deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    check(w, lambda s, d, *_: ns(d) != "x")


def test_default_deny_egress(w):
    w.apply(policy("x", "deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]}))
    check(w, lambda s, d, *_: ns(s) != "x")


def test_deleting_policies_restores_traffic(w):
    w.apply(policy("x", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    check(w, lambda s, d, *_: ns(s) != "x" and ns(d) != "x")
    w.clear()
    check(w, everything)


def test_replies_of_allowed_connections_pass_both_isolations(w):
    """x isolated both ways; y may connect to x, x may connect to z: the answers (x -> y, z -> x)
    are allowed by no rule, only as replies."""
    w.apply(policy("x", "in-from-y", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
                                      "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}))
    check(w, lambda s, d, *_: (ns(d) != "x" or ns(s) == "y") and (ns(s) != "x" or ns(d) == "z"))


def test_allow_from_the_same_namespace(w):
    w.apply(policy("x", "allow-same", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))
    check(w, lambda s, d, *_: ns(d) != "x" or ns(s) == "x")


def test_namespace_selector(w):
    w.apply(policy("x", "allow-y-to-a", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "In", "values": ["y"]}]}}]}]}))
    check(w, lambda s, d, *_: d != "x/a" or ns(s) == "y")


def test_pod_and_namespace_selector_in_one_peer_is_and(w):
    w.apply(policy("x", "and", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    check(w, lambda s, d, *_: d != "x/a" or s == "y/b")


def test_pod_and_namespace_selector_in_two_peers_is_or(w):
    w.apply(policy("x", "or", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                              {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    check(w, lambda s, d, *_: d != "x/a" or ns(s) == "y" or s == "x/b")


def test_port_by_number_and_protocol(w):
    w.apply(policy("x", "tcp-81", {"podSelector": {"matchLabels": {"pod": "a"}},
                                   "ingress": [{"ports": [{"port": 81}]}]}))
    check(w, lambda s, d, port, proto: d != "x/a" or (port, proto) == (81, "tcp"))


def test_named_port(w):
    w.apply(policy("x", "named", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {}}], "ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]}))
    check(w, lambda s, d, port, proto: ns(d) != "x" or (port, proto) == (80, "udp"))


def test_a_named_port_is_the_number_of_the_destination_pod(w):
    """"web" is 81 on x/a and 80 on every z pod: ingress to x/a resolves it on x/a (81), x/a's
    egress to z resolves it on each z pod (80), whatever the other side calls it."""
    for key in PLACES:
        w.change(w.api.put, "pods", pod_object(key, PLACES[key], w.pods[key][1], web=81 if key == "x/a" else 80))
    try:
        w.apply(policy("x", "web-in", {"podSelector": {"matchLabels": {"pod": "a"}},
                                       "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "web"}]}]}),
                policy("x", "web-out", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                                        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                                                    "ports": [{"port": "web"}]}]}))
        check(w, lambda s, d, port, proto: (d != "x/a" or (port, proto) == (81, "tcp"))
              and (s != "x/a" or (ns(d) == "z" and (port, proto) == (80, "tcp"))))
    finally:
        for key in PLACES:
            w.change(w.api.put, "pods", pod_object(key, PLACES[key], w.pods[key][1]))


def test_end_port_range_and_several_policies_are_a_union(w):
    w.apply(policy("x", "range", {"podSelector": {"matchLabels": {"pod": "a"}},
                                  "ingress": [{"ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}],
                                               "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            policy("x", "udp-from-z", {"podSelector": {"matchLabels": {"pod": "a"}},
                                       "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}],
                                                    "from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}))
    check(w, lambda s, d, port, proto: d != "x/a" or (ns(s) == "y" and proto == "tcp")
          or (ns(s) == "z" and (port, proto) == (81, "udp")))


def test_egress_to_an_ip_block_with_an_exception(w):
    yb = str(w.pods["y/b"][1][0])
    w.apply(policy("x", "egress-block", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"{yb}/32"]}}]}]}))
    check(w, lambda s, d, *_: s != "x/a" or d != "y/b")


def test_egress_by_selector_and_named_port_of_the_peer(w):
    w.apply(policy("x", "egress-named", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                    "ports": [{"port": "serve-81-tcp"}]}]}))
    check(w, lambda s, d, port, proto: s != "x/a" or (ns(d) == "z" and (port, proto) == (81, "tcp")))


def test_label_changes_flip_verdicts(w):
    w.apply(policy("x", "from-team-blue", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}},
                              {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "friend"}}}]}]}))
    check(w, lambda s, d, *_: d != "x/a")
    w.change(w.api.put, "namespaces", namespace_object("z", {"team": "blue"}))
    check(w, lambda s, d, *_: d != "x/a" or ns(s) == "z")
    ip = w.pods["y/c"][1]
    w.change(w.api.put, "pods", pod_object("y/c", PLACES["y/c"], ip, {"pod": "c", "role": "friend"}))
    check(w, lambda s, d, *_: d != "x/a" or ns(s) == "z" or s == "y/c")
    w.change(w.api.put, "namespaces", namespace_object("z"))
    w.change(w.api.put, "pods", pod_object("y/c", PLACES["y/c"], ip))
    check(w, lambda s, d, *_: d != "x/a")


def test_ipv6(w):
    w.apply(policy("y", "v6", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]},
        {"from": [{"ipBlock": {"cidr": "fd00:10:244::/56"}}], "ports": [{"port": 81, "protocol": "UDP"}]}]}))
    check(w, lambda s, d, port, proto: ns(d) != "y" or ns(s) == "x" or (port, proto) == (81, "udp"), family=6)


def table(w: World, node: str) -> str:
    return w.cluster.nodes[node].sh("nft", "list", "table", "inet", "pycni-policy")


def test_a_new_pod_is_enforced_from_its_first_packet_before_the_api_has_its_address(w):
    w.apply(policy("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}),
            policy("x", "allow-d", {"podSelector": {"matchLabels": {"pod": "d"}}, "ingress": [{}]}))
    for key in ("x/d", "x/e"):          # scheduled to node-a: the Pod objects exist, without addresses
        w.change(w.api.put, "pods", pod_object(key, "node-a"))
    try:
        for key, allowed in (("x/d", True), ("x/e", False)):
            w.add(key, "node-a", publish=False)
            returned = time.monotonic()
            got = w.probe(sources=["y/b", "y/a"], targets=[key])   # y/b on node-a, y/a on node-b
            assert time.monotonic() - returned < 1.0 + DENIED_WAIT + 0.5
            assert set(got.values()) == {allowed}, (key, got)
        # a pod the agent does not know at all (no Pod object) in a namespace with policies: pending
        w.add("x/f", "node-a", publish=False)
        assert set(w.probe(sources=["y/b", "y/a", "x/a"], targets=["x/f"]).values()) == {False}
        assert set(w.probe(sources=["x/f"], targets=["y/b", "y/a"]).values()) == {False}
        assert str(w.pods["x/f"][1][0]) in table(w, "node-a").split("pending4")[1].split("}")[0]
        # ...until its Pod object appears: then its policies apply (x/f is not selected by allow-d)
        w.change(w.api.put, "pods", pod_object("x/f", "node-a", w.pods["x/f"][1]))
        assert set(w.probe(sources=["x/f"], targets=["y/b", "y/a"]).values()) == {True}
    finally:
        for key in ("x/d", "x/e", "x/f"):
            pod, ips = w.pods.pop(key)
            w.cluster.del_pod("node-a", f"cid-{key.replace('/', '-')}", pod, tuple(key.split("/")))
            listing = table(w, "node-a")
            assert all(f"{ip}" not in listing for ip in ips), f"DEL left {key}'s addresses in sets"
            w.change(w.api.delete, "pods", *key.split("/"))
    records = list((w.cluster.nodes["node-a"].tmp / "policy" / "attachments").iterdir())
    assert len(records) == sum(node == "node-a" for node in PLACES.values())     # DEL removed theirs


def test_killed_agent_verdicts_stay_and_a_restart_reconciles_without_a_gap(w):
    w.apply(policy("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    expected = lambda s, d, *_: ns(d) != "x"  # noqa: E731
    check(w, expected)
    w.agents["node-a"].stop(kill=True)
    check(w, expected)                      # the kernel keeps enforcing without the agent

    # restarted with the policy still in place, while the API refuses to list policies (as with
    # RBAC missing): the agent must not sync what it half knows; the kernel's table stays
    w.api.refuse.add("networkpolicies")
    w.agents["node-a"] = agent = w.cluster.start_agent("node-a", w.kubeconfig)
    agent.wait_for("watching networkpolicies")
    check(w, expected)
    assert agent.count("agent: network policy:") == 0
    w.api.refuse.clear()                    # the agent's next try lists them: then it syncs
    agent.wait_for("agent: network policy:")
    assert "1 policies on this node" in agent.wait_for("agent: network policy:")
    w.settle()
    check(w, expected)

    # killed again; the policy is deleted while it is down: still enforced (fail closed) on node-a
    # (x/a, x/c), lifted on node-b; the restarted agent's first sync reconciles node-a
    w.agents["node-a"].stop(kill=True)
    before = w.syncs()
    w.api.delete("networkpolicies", "x", "deny")
    w.policies.clear()
    w.agents["node-b"].wait_for("agent: network policy:", before["node-b"] + 1)
    check(w, lambda s, d, *_: d not in ("x/a", "x/c"))
    w.agents["node-a"] = w.cluster.start_agent("node-a", w.kubeconfig)
    w.agents["node-a"].wait_for("agent: network policy:")
    w.settle()
    check(w, everything)


def test_sctp_ports_are_enforced_as_numbers_in_the_kernel(w):
    """This kernel has no SCTP sockets to probe with: the rule and its elements are checked in the
    kernel's own listing, and TCP on the same port stays denied."""
    w.apply(policy("x", "sctp", {"podSelector": {"matchLabels": {"pod": "a"}},
                                 "ingress": [{"ports": [{"protocol": "SCTP", "port": 80, "endPort": 81}]}]}))
    listing = table(w, "node-a")
    assert "sctp . 80-81" in listing and "meta l4proto . th dport @r0i0_ports return" in listing
    check(w, lambda s, d, *_: d != "x/a")


def test_a_node_on_legacy_iptables_enforces_nothing_and_says_why(node):
    """Never half: the agent writes a conflist without networkPolicy and installs no table."""
    node.sh("iptables-legacy", "-t", "nat", "-L")        # legacy NAT in use on this node
    api = FakeAPI("127.0.0.1", netns=node.name)
    try:
        api.put("nodes", api_node("node-a"))
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CNI_")}
        env["PYCNI_LOG_FILE"] = str(node.log_file)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.name, sys.executable, "-m", "cni", "agent", "--node-name", "node-a",
             "--kubeconfig", api.kubeconfig(node.tmp / "kubeconfig"), "--from", "none",
             "--conf-dir", str(node.tmp / "net.d"), "--data-dir", str(node.data_dir),
             "--policy-dir", str(node.tmp / "policy"), "--peers-file", str(node.tmp / "peers.json")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=str(Path(__file__).parents[2]))
        try:
            lines = [proc.stdout.readline() for _ in range(3)]
            assert "NetworkPolicy is NOT enforced on this node: this node's firewall is legacy iptables" in lines[0]
            assert any("conflist written" in line for line in lines), lines
        finally:
            proc.kill()
            proc.wait()
        conf = json.loads((node.tmp / "net.d" / "10-pycni.conflist").read_text())
        assert "networkPolicy" not in conf["plugins"][0]
        assert "pycni-policy" not in node.sh("nft", "list", "tables")
        assert "NOT enforced" in node.log_file.read_text()
    finally:
        api.close()
        node.sh("iptables-legacy", "-t", "nat", "-F")


def test_gc_forgets_the_sets_of_an_attachment_whose_del_never_came(w):
    w.apply(policy("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    w.change(w.api.put, "pods", pod_object("x/g", "node-a"))
    pod, ips = w.add("x/g", "node-a", publish=False, serve=False)
    w.pods.pop("x/g")
    assert str(ips[0]) in table(w, "node-a")
    valid = [{"containerID": f"cid-{k.replace('/', '-')}", "ifname": "eth0"}
             for k, n in PLACES.items() if n == "node-a"]
    gc = w.cluster.nodes["node-a"].pycni("GC", {**w.cluster.conf("node-a"), "cniVersion": "1.1.0",
                                               "cni.dev/valid-attachments": valid})
    assert gc.rc == 0, gc.out
    assert all(str(ip) not in table(w, "node-a") for ip in ips)
    records = list((w.cluster.nodes["node-a"].tmp / "policy" / "attachments").iterdir())
    assert len(records) == len(valid)
    w.change(w.api.delete, "pods", "x", "g")
    check(w, lambda s, d, *_: ns(d) != "x")          # the pods GC kept are untouched


def test_a_reused_address_does_not_inherit_the_verdicts_of_the_pod_that_had_it(w):
    """Issue 23 row 2: pod A's DEL is done but its terminating Pod object still lists its
    address (as the API server keeps it until the object is removed); pod B is given that
    address. B must not reach what only A could: the sync after A's DEL must not put A's API
    address back into the sets, nor the sync after B's ADD."""
    w.apply(policy("x", "friends-only", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "friend"}}}]}]}))
    friend_labels = {"pod": "friend", "role": "friend"}
    w.change(w.api.put, "pods", pod_object("y/friend", "node-a", labels=friend_labels))
    w.change(w.api.put, "pods", pod_object("y/stranger", "node-a"))
    added = []
    try:
        _, ips = w.add("y/friend", "node-a", serve=False, labels=friend_labels)
        added.append("y/friend")
        w.settle()
        assert set(w.probe(sources=["y/friend"], targets=["x/a"]).values()) == {True}
        # the kubelet stops A: the object is terminating (podIPs kept), then A's DEL
        # (a change of no field the agent keeps: the agent drops the event, no sync follows)
        w.api.terminate("pods", "y", "friend")
        w.settle()
        pod, _ = w.pods.pop("y/friend")
        added.remove("y/friend")
        w.cluster.del_pod("node-a", "cid-y-friend", pod, ("y", "friend"))
        # a change the agent keeps (a label), so that a sync follows A's DEL
        w.change(w.api.put, "pods", pod_object("y/stranger", "node-a", labels={"pod": "stranger", "rev": "2"}))
        assert str(ips[0]) not in table(w, "node-a"), "a sync after A's DEL put A's address back"
        # B (unlabelled) gets A's address, before and after the API has it
        w.add("y/stranger", "node-a", publish=False, serve=False, ip=str(ips[0]))
        added.append("y/stranger")
        assert w.pods["y/stranger"][1][0] == ips[0]
        assert set(w.probe(sources=["y/stranger"], targets=["x/a"]).values()) == {False}
        w.change(w.api.put, "pods", pod_object("y/stranger", "node-a", w.pods["y/stranger"][1]))
        assert set(w.probe(sources=["y/stranger"], targets=["x/a"]).values()) == {False}
        assert set(w.probe(sources=["y/b"], targets=["x/a"]).values()) == {False}
    finally:
        for key in added:
            pod, _ = w.pods.pop(key)
            w.cluster.del_pod("node-a", f"cid-{key.replace('/', '-')}", pod, tuple(key.split("/")))
        for key in ("y/friend", "y/stranger"):
            w.change(w.api.delete, "pods", *key.split("/"))
