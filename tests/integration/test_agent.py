"""`pycni agent` on simulated nodes: two node namespaces on a shared underlay bridge, each with
its own pod CIDR, the agent fed the cluster's Node objects in the API's JSON (--nodes-file), pods
added with the conflist the agent wrote. Pod on node A talks to pod on node B (IPv4 and IPv6,
without masquerade); traffic leaving the cluster is masqueraded; a node's removal withdraws its
routes."""

from __future__ import annotations

from .cluster import NODES, OUTSIDE4, OUTSIDE6, addresses, ask, sh
from .cluster import cluster  # noqa: F401  (the fixture)


def test_pods_on_two_nodes_reach_each_other_and_removal_withdraws_routes(cluster):
    both = list(NODES)
    for name in both:
        out = cluster.agent(name, both)
        assert "conflist written, routes +2 -0" in out
    # a second sync with nothing new changes nothing
    assert "conflist unchanged, routes +0 -0" in cluster.agent("node-a", both)
    a = cluster.nodes["node-a"]
    routes_a = a.sh("ip", "route", "show", "proto", "152") + a.sh("ip", "-6", "route", "show", "proto", "152")
    assert "10.244.1.0/24 via 172.31.0.3" in routes_a and "fd00:10:244:1::/64 via fd31::3" in routes_a

    pod_a, res_a = cluster.add_pod("node-a", "pa")
    pod_b, res_b = cluster.add_pod("node-b", "pb")
    a4, a6 = addresses(res_a)
    b4, b6 = addresses(res_b)
    assert a4.startswith("10.244.0.") and b4.startswith("10.244.1.")
    assert a6.startswith("fd00:10:244::") and b6.startswith("fd00:10:244:1::")

    sh("ping", "-c1", "-W2", b4, ns=pod_a)
    sh("ping", "-6", "-c1", "-W2", b6, ns=pod_a)
    cluster.serve(pod_b, "pod-b")
    cluster.serve(cluster.underlay, "outside")
    # pod to pod across nodes keeps the pod's own source address (no masquerade)...
    assert ask(pod_a, b4) == f"pod-b {a4}"
    assert ask(pod_a, b6) == f"pod-b {a6}"
    # ...and leaving the cluster, the node's address
    assert ask(pod_a, OUTSIDE4) == "outside 172.31.0.2"
    assert ask(pod_a, OUTSIDE6) == "outside fd31::2"
    assert "podnets4" in a.sh("nft", "list", "table", "inet", "pycni-agent")

    # node-b leaves the cluster: node-a withdraws its routes, and pod-b is no longer reachable
    out = cluster.agent("node-a", ["node-a"])
    assert "routes +0 -2" in out
    assert a.sh("ip", "route", "show", "proto", "152").strip() == ""
    assert a.sh("ip", "-6", "route", "show", "proto", "152").strip() == ""
    assert ask(pod_a, b4) == ""
    # and comes back
    assert "routes +2 -0" in cluster.agent("node-a", both)
    assert ask(pod_a, b4) == f"pod-b {a4}"
