"""The agent's cluster masquerade applies only to what leaves the node (issue 28): a pod's
multicast and limited broadcast, bridged to the other pods of its node on a network without the
port binding, keep the pod's own source address (they used to arrive from the gateway's)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .cluster import NODES, OUTSIDE4, addresses, ask, sh
from .cluster import cluster  # noqa: F401  (the fixture)
from .conftest import ready_line

APP = str(Path(__file__).with_name("attack_app.py"))
PORT = 7100


def test_bridged_multicast_and_broadcast_keep_the_pods_source(cluster):
    for name in NODES:
        cluster.agent(name, list(NODES))
    assert "networkPolicy" not in cluster.conf("node-a")      # no binding: the bridge floods
    sender, res = cluster.add_pod("node-a", "ps")
    receiver, _ = cluster.add_pod("node-a", "pr")
    src4, _ = addresses(res)
    log = cluster.tmp / "receiver.log"
    srv = subprocess.Popen(["ip", "netns", "exec", receiver, sys.executable, APP, "listen", str(PORT), str(log)],
                           stdout=subprocess.PIPE, text=True)
    cluster.servers.append(srv)
    assert ready_line(srv).strip() == "ready"
    for addr, payload in (("224.0.0.1", "all-hosts"), ("255.255.255.255", "bcast")):
        sh(sys.executable, APP, "send", addr, str(PORT), payload, ns=sender)
    time.sleep(0.8)
    got = log.read_text() if log.exists() else ""
    assert f"udp {src4} all-hosts" in got and f"udp {src4} bcast" in got, got
    # control: leaving the cluster is still masqueraded
    cluster.serve(cluster.underlay, "outside")
    assert ask(sender, OUTSIDE4) == "outside 172.31.0.2"
