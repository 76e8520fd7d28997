"""The agent's pure decisions (cni.agent.nodes) from Node objects in the API's JSON."""

import ipaddress

import pytest

from cni.agent import host
from cni.agent.nodes import NodeError, NodeInfo, Options, conflist, desired, parse_node, parse_node_list, peer_routes
from tests.k8s_nodes import node_list, node_object

NODES = node_list(
    node_object("kind-control-plane", ["10.244.0.0/24", "fd00:10:244::/64"], ["172.18.0.2", "fc00:f853:ccd:e793::2"]),
    node_object("kind-worker", ["10.244.1.0/24", "fd00:10:244:1::/64"], ["172.18.0.3", "fc00:f853:ccd:e793::3"]),
    node_object("kind-worker2", ["10.244.2.0/24"], ["172.18.0.4"], legacy=True),
)


def net(s):
    return ipaddress.ip_network(s)


def test_parse_node_list():
    nodes = parse_node_list(NODES)
    assert [n.name for n in nodes] == ["kind-control-plane", "kind-worker", "kind-worker2"]
    assert nodes[0].pod_cidrs == (net("10.244.0.0/24"), net("fd00:10:244::/64"))
    assert [str(a) for a in nodes[0].internal_ips] == ["172.18.0.2", "fc00:f853:ccd:e793::2"]
    assert nodes[2].pod_cidrs == (net("10.244.2.0/24"),)      # spec.podCIDR only (older clusters)


@pytest.mark.parametrize("bad", [
    {"metadata": {}},
    {"metadata": {"name": "n"}, "spec": {"podCIDRs": ["10.0.0.1/24"]}},          # host bits set
    {"metadata": {"name": "n"}, "status": {"addresses": [{"type": "InternalIP", "address": "x"}]}},
])
def test_bad_nodes(bad):
    with pytest.raises(NodeError):
        parse_node(bad)


def test_peer_routes_by_family():
    routes = peer_routes("kind-worker", parse_node_list(NODES))
    assert {str(k): str(v) for k, v in routes.items()} == {
        "10.244.0.0/24": "172.18.0.2", "fd00:10:244::/64": "fc00:f853:ccd:e793::2",
        "10.244.2.0/24": "172.18.0.4"}


def test_a_peer_without_an_address_of_the_family_gets_no_route():
    nodes = [NodeInfo("a", (ipaddress.ip_address("10.0.0.1"),), (net("10.244.0.0/24"),)),
             NodeInfo("b", (ipaddress.ip_address("10.0.0.2"),), (net("fd00::/64"),))]
    assert peer_routes("a", nodes) == {}


def test_conflist_dual_stack():
    me = parse_node_list(NODES)[1]
    conf = conflist(me, Options(mtu=1400))
    plugin = conf["plugins"][0]
    assert conf["name"] == "pycni" and plugin["type"] == "pycni" and plugin["mtu"] == 1400
    assert plugin["ipMasq"] is False and plugin["capabilities"] == {"portMappings": True, "bandwidth": True}
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
    assert plugin["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert plugin["ipam"]["dataDir"].startswith("/run/")
    from cni.tools.install import validate_conflist

    validate_conflist(conf)


def test_desired_state():
    nodes = parse_node_list(NODES)
    d = desired("kind-worker2", nodes, Options(cluster_cidrs=(net("10.244.0.0/16"),)))
    assert d.conflist["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}]]
    assert set(map(str, d.routes)) == {"10.244.0.0/24", "10.244.1.0/24"}   # no IPv6 InternalIP here...
    # ...but it still knows every pod network (for masquerade), collapsed
    assert [str(n) for n in d.pod_networks] == ["10.244.0.0/16", "fd00:10:244::/63"]
    # a node the API has not given a podCIDR yet: no conflist (the runtime keeps waiting)
    assert desired("new", [*nodes, NodeInfo("new")], Options()).conflist is None
    assert desired("kind-worker", nodes, Options(masquerade=False)).pod_networks == ()


def test_masquerade_table():
    text = host.render_masquerade((net("10.244.0.0/16"), net("fd00:10:244::/56")))
    assert text.startswith("add table inet pycni-agent\ndelete table inet pycni-agent\n")
    assert "ip saddr @podnets4 ip daddr != @podnets4 ip daddr != { 224.0.0.0/4, 255.255.255.255 } masquerade" in text
    assert "ip6 saddr @podnets6 ip6 daddr != @podnets6 ip6 daddr != ff00::/8 masquerade" in text
    assert "elements = { fd00:10:244::/56 }" in text
    assert host.render_masquerade(()) == "add table inet pycni-agent\ndelete table inet pycni-agent\n"


def test_the_per_pod_path_never_imports_the_kubernetes_client():
    import subprocess
    import sys

    code = ("import sys, cni.entry, cni.runtime.registry, cni.spec.skel, cni.bridge.plugin, cni.portmap.plugin, "
            "cni.loopback, ipam.plugin, cni.runtime.server, cni.cli, cni.agent.main, cni.agent.host; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_syncer_skips_events_that_change_nothing_of_ours():
    from cni.agent.main import Syncer

    now = [0.0]
    applied = []
    sync = Syncer("kind-worker", Options(), lambda s: applied.append(s) or {"conflist": False, "routes": (0, 0)},
                  clock=lambda: now[0], every=60)
    nodes = parse_node_list(NODES)
    assert sync(nodes) is not None and len(applied) == 1
    now[0] = 10
    assert sync(nodes) is None and len(applied) == 1            # a heartbeat: nothing changed
    gone = [n for n in nodes if n.name != "kind-worker2"]
    assert sync(gone) is not None and len(applied) == 2        # a node left: routes change
    now[0] = 100
    assert sync(gone) is not None and len(applied) == 3        # periodic resync repairs drift
