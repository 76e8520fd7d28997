"""`pycni agent` against the fake API server (tests/k8s_api.py) in a node namespace: how it reads
the cluster. Initial lists come in pages; a watch that ends is resumed from the last version seen
(an event's or a BOOKMARK's) without listing again; only 410 Gone lists again, once; Pods are
listed and watched only while some NetworkPolicy exists; SIGTERM during a sync lets that sync
finish and exits well inside the DaemonSet's grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cni.firewall.policy import Locked
from tests.k8s_api import FakeAPI
from tests.k8s_nodes import node_object

from .cluster import Agent
from .conftest import node  # noqa: F401  (the fixture)

ROOT = Path(__file__).parents[2]


def start_agent(node, api: FakeAPI, *extra: str) -> Agent:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["PYCNI_LOG_FILE"] = str(node.log_file)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", node.name, sys.executable, "-m", "cni", "agent", "--node-name", "me",
         "--kubeconfig", api.kubeconfig(node.tmp / "kubeconfig"), "--from", "none",
         "--conf-dir", str(node.tmp / "net.d"), "--data-dir", str(node.data_dir),
         "--peers-file", str(node.tmp / "peers.json"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))
    return Agent(proc)


def eventually(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def a_node(i: int) -> dict:       # no InternalIP: no route is tried (the node namespace has no underlay)
    return node_object(f"n{i:04d}", [f"10.{100 + i // 256}.{i % 256}.0/24"])


@pytest.fixture
def api(node):
    server = FakeAPI("127.0.0.1", netns=node.name, bookmark_every=0.2)
    server.put("nodes", node_object("me", ["10.99.0.0/24"]))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def agents():
    started: list[Agent] = []
    yield started
    for a in started:
        a.stop()


def test_pages_then_a_watch_resumed_from_bookmarks_and_410_lists_once(node, api, agents):
    api.put_many("nodes", [a_node(i) for i in range(1200)])
    agents.append(agent := start_agent(node, api, "--no-network-policy"))
    agent.wait_for("agent: 1201 nodes")
    assert api.lists["nodes"] == 1 and api.requests[("nodes", "list")] == 3     # 500 + 500 + 201
    assert eventually(lambda: api.watching["nodes"] == 1)

    # the watch ends (API server restart): the next one starts where it ended; nothing listed again
    api.end_watches()
    api.put("nodes", a_node(2000))
    agent.wait_for("agent: 1202 nodes")
    assert eventually(lambda: api.requests[("nodes", "watch")] == 2)

    # other kinds' writes move the cluster's version on; the Node watch's BOOKMARKs carry it, so a
    # compaction of everything before now does not make the agent's version too old
    api.put_many("namespaces", [{"metadata": {"name": f"ns{k}"}} for k in range(50)])
    time.sleep(1.0)                                    # bookmarks every 0.2 s
    api.compact()
    api.end_watches()
    api.put("nodes", a_node(2001))
    agent.wait_for("agent: 1203 nodes")
    assert eventually(lambda: api.requests[("nodes", "watch")] == 3)
    assert api.lists["nodes"] == 1

    # compacted past the agent's version: 410 Gone -> one new list (in pages), then watching again
    api.expire()
    assert eventually(lambda: api.lists["nodes"] == 2)
    api.put("nodes", a_node(2002))
    agent.wait_for("agent: 1204 nodes")
    time.sleep(0.5)
    assert api.lists["nodes"] == 2 and api.requests[("nodes", "list")] == 6
    assert api.watching["nodes"] == 1


def policy(name: str) -> dict:
    return {"metadata": {"namespace": "x", "name": name}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def world(api: FakeAPI) -> None:
    api.put("namespaces", {"metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "x"}}})
    api.put("pods", {"metadata": {"namespace": "x", "name": "a", "labels": {"app": "a"}},
                     "spec": {"nodeName": "me"}, "status": {"phase": "Running", "podIP": "10.99.0.5"}})


def hold(node, ip: str) -> None:
    """This node's IPAM holds `ip` for pod x/a (as its ADD left it): an API address of a local pod
    counts only while the node's IPAM holds it (issue 23 row 2)."""
    import ipaddress

    from ipam.store import DiskStore

    store = DiskStore(str(node.data_dir / "pycni"))
    with store.lock():
        assert store.reserve(ipaddress.ip_address(ip), "c-a", "eth0", 0)


def test_pods_are_listed_and_watched_only_while_a_policy_exists(node, api, agents):
    world(api)
    hold(node, "10.99.0.5")
    agents.append(agent := start_agent(node, api, "--policy-dir", str(node.tmp / "policy"),
                                       "--pod-watch-linger", "0.5"))
    assert "0 policies on this node" in agent.wait_for("agent: network policy:")
    time.sleep(1.0)
    assert api.requests[("pods", "list")] == 0 and api.requests[("pods", "watch")] == 0

    api.put("networkpolicies", policy("deny"))
    assert "1 policies on this node" in agent.wait_for("agent: network policy:", 2)
    assert api.lists["pods"] == 1 and eventually(lambda: api.watching["pods"] == 1)
    assert "10.99.0.5" in node.sh("nft", "list", "table", "inet", "pycni-policy")

    api.delete("networkpolicies", "x", "deny")
    assert "0 policies on this node" in agent.wait_for("agent: network policy:", 3)
    agent.wait_for("Pods no longer watched")
    assert eventually(lambda: api.watching["pods"] == 0)
    assert "10.99.0.5" not in node.sh("nft", "list", "table", "inet", "pycni-policy")
    time.sleep(1.0)
    assert api.lists["pods"] == 1 and api.watching["pods"] == 0


def test_sigterm_during_a_sync_lets_it_finish_then_exits(node, api, agents):
    world(api)
    hold(node, "10.99.0.5")
    state = str(node.tmp / "policy")
    agents.append(agent := start_agent(node, api, "--policy-dir", state))
    agent.wait_for("agent: network policy:")
    with Locked(state):                   # the next sync waits for the state's lock (a busy node)
        api.put("networkpolicies", policy("deny"))
        agent.wait_for("a NetworkPolicy exists: watching Pods")
        time.sleep(1.0)                   # the sync is waiting for the lock now
        assert agent.count("agent: network policy:") == 1
        sent = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert agent.proc.poll() is None, "exited with the sync under way"
    agent.proc.wait(10)
    took = time.monotonic() - sent
    assert agent.proc.returncode == 0 and took < 10.0, took
    assert eventually(lambda: agent.count("agent: stopped in") == 1, 2)
    assert "1 policies on this node" in agent.wait_for("agent: network policy:", 2)   # finished, then stopped
    listing = node.sh("nft", "list", "table", "inet", "pycni-policy")          # and its table stays
    assert "10.99.0.5" in listing
    assert (node.tmp / "policy" / "pods" / "x" / "a").exists()
