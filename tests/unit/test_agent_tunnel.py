"""The agent's per-peer decisions (cni.agent.tunnel, pure): direct where on-link, VXLAN elsewhere
(or always), unreachable and why; the pods' MTU; the VTEP MAC; and the start check that refuses a
mode the kernel lacks before anything is configured."""

import errno
import ipaddress

import pytest

from cni.agent import tunnel
from cni.agent.nodes import NodeError, NodeInfo, Options, desired, parse_node
from cni.agent.tunnel import Facts, Reach, TunnelOptions, plan, vtep_mac
from cni.linux.rtnl import NetlinkError
from tests.k8s_nodes import node_object

ip, net = ipaddress.ip_address, ipaddress.ip_network


def node(name, ips, cidrs, mac=""):
    return NodeInfo(name, tuple(map(ip, ips)), tuple(map(net, cidrs)), mac)


A = node("a", ["172.31.0.2", "fd31::2"], ["10.244.0.0/24", "fd00:10:244::/64"])
B = node("b", ["172.31.0.3", "fd31::3"], ["10.244.1.0/24", "fd00:10:244:1::/64"])
C = node("c", ["172.31.1.2", "fd31:1::2"], ["10.244.2.0/24", "fd00:10:244:2::/64"], mac="02:00:00:00:0c:0c")
ON_LINK = {"172.31.0.3": Reach("eth0", 1500), "fd31::3": Reach("eth0", 1500),
           "172.31.1.2": Reach("eth0", 1500, "172.31.0.1"), "fd31:1::2": Reach("eth0", 1500, "fd31::1")}


def modes(overlay):
    return {(p.node, str(p.cidr)): p.mode for p in overlay.peers}


def test_auto_direct_where_on_link_vxlan_behind_a_router():
    o = plan("a", [A, B, C], TunnelOptions(), Facts(ON_LINK, 1500))
    assert modes(o) == {("b", "10.244.1.0/24"): "direct", ("b", "fd00:10:244:1::/64"): "direct",
                        ("c", "10.244.2.0/24"): "vxlan", ("c", "fd00:10:244:2::/64"): "vxlan"}
    assert o.tunnel_routes == {net("10.244.2.0/24"): ip("10.244.2.0"), net("fd00:10:244:2::/64"): ip("fd00:10:244:2::")}
    assert o.fdb == {"02:00:00:00:0c:0c": ip("172.31.1.2")}          # the annotation's MAC
    assert o.neighbours == {ip("10.244.2.0"): "02:00:00:00:0c:0c", ip("fd00:10:244:2::"): "02:00:00:00:0c:0c"}
    d = o.device
    assert (d.name, d.vni, d.port, str(d.local), d.mtu) == ("pycni.vxlan", 4242, 4789, "172.31.0.2", 1450)
    assert d.addresses == (net("10.244.0.0/32"), net("fd00:10:244::/128")) and d.mac == vtep_mac("a")
    assert o.pod_mtu == 1450


def test_without_a_tunnel_peer_the_pods_get_the_uplinks_mtu():
    o = plan("a", [A, B], TunnelOptions(), Facts(ON_LINK, 9000))
    assert o.pod_mtu == 1500 and not o.fdb and not o.tunnel_routes
    assert plan("a", [A], TunnelOptions(), Facts({}, 9000)).pod_mtu == 9000       # no peers: the default route's
    assert plan("a", [A], TunnelOptions(), Facts({}, None)).pod_mtu is None       # nothing known: plugin default
    # the smallest uplink that carries pod traffic
    reach = {**ON_LINK, "172.31.1.2": Reach("eth1", 1400, "172.31.9.1")}
    assert plan("a", [A, B, C], TunnelOptions(), Facts(reach, 1500)).pod_mtu == 1350


def test_an_explicit_mtu_wins_in_the_conflist():
    facts = Facts(ON_LINK, 1500)
    assert desired("a", [A, B, C], Options(), facts).conflist["plugins"][0]["mtu"] == 1450
    assert desired("a", [A, B, C], Options(mtu=1300), facts).conflist["plugins"][0]["mtu"] == 1300
    d = desired("a", [A, B, C], Options(), facts)
    assert d.routes == {net("10.244.1.0/24"): ip("172.31.0.3"), net("fd00:10:244:1::/64"): ip("fd31::3")}


def test_ipv6_underlay_and_its_overhead():
    a6, c6 = (node(n.name, [str(x) for x in reversed(n.internal_ips)], [str(c) for c in n.pod_cidrs])
              for n in (A, C))
    o = plan("a", [a6, c6], TunnelOptions(), Facts(ON_LINK, 1500))
    assert str(o.device.local) == "fd31::2" and o.device.mtu == 1430 and o.pod_mtu == 1430
    assert o.fdb == {vtep_mac("c"): ip("fd31:1::2")}             # no annotation: the derived MAC


def test_mode_vxlan_tunnels_on_link_peers_and_direct_names_the_unreachable():
    o = plan("a", [A, B, C], TunnelOptions(mode="vxlan"), Facts(ON_LINK, 1500))
    assert set(modes(o).values()) == {"vxlan"} and o.pod_mtu == 1450
    assert plan("a", [A], TunnelOptions(mode="vxlan"), Facts({}, 1500)).pod_mtu == 1450
    o = plan("a", [A, B, C], TunnelOptions(mode="direct"), Facts(ON_LINK, 1500))
    assert o.device is None and not o.fdb and o.pod_mtu == 1500
    why = {p.cidr: p.why for p in o.peers if p.mode == "unreachable"}
    assert why == {net("10.244.2.0/24"): "172.31.1.2 is not on-link (via 172.31.0.1); mode direct has no tunnel",
                   net("fd00:10:244:2::/64"): "fd31:1::2 is not on-link (via fd31::1); mode direct has no tunnel"}


def test_unreachable_peers_and_their_reasons():
    lonely = node("d", ["172.31.5.5"], ["10.244.3.0/24", "fd00:10:244:3::/64"])
    o = plan("a", [A, lonely], TunnelOptions(mode="direct"), Facts({}, None))
    assert {p.why for p in o.peers} == {"no route to 172.31.5.5", "no IPv6 InternalIP"}
    # auto: the IPv6 pods of a node with only an IPv4 address ride the IPv4 tunnel
    o = plan("a", [A, lonely], TunnelOptions(), Facts({"172.31.5.5": Reach("eth0", 1500, "172.31.0.1")}, None))
    assert set(modes(o).values()) == {"vxlan"}
    v6only = node("e", ["fd31:7::7"], ["10.244.4.0/24"])
    o = plan("a", [A, v6only], TunnelOptions(), Facts({"fd31:7::7": Reach("eth0", 1500, "fd31::1")}, None))
    assert [p.why for p in o.peers] == ["no IPv4 InternalIP (the tunnel's underlay)"]
    o = plan("x", [node("x", [], ["10.244.9.0/24"]), C], TunnelOptions(), Facts(ON_LINK, None))
    assert o.device is None and {p.why for p in o.peers} == {"this node has no InternalIP to send the tunnel from"}


def test_an_existing_devices_mac_is_kept():
    o = plan("a", [A, C], TunnelOptions(), Facts(ON_LINK, 1500, own_mac="02:12:34:56:78:9a"))
    assert o.device.mac == "02:12:34:56:78:9a"


def test_vtep_mac_is_stable_unicast_and_locally_administered():
    mac = vtep_mac("node-a")
    first = int(mac.split(":")[0], 16)
    assert mac == vtep_mac("node-a") != vtep_mac("node-b") and first & 1 == 0 and first & 2 == 2


def test_the_annotation_is_read_and_checked():
    obj = node_object("c", ["10.244.2.0/24"], ["172.31.1.2"])
    obj["metadata"]["annotations"] = {tunnel.ANNOTATION_MAC: "02:AA:bb:cc:dd:ee"}
    assert parse_node(obj).vtep_mac == "02:aa:bb:cc:dd:ee"
    obj["metadata"]["annotations"] = {tunnel.ANNOTATION_MAC: "not-a-mac"}
    with pytest.raises(NodeError, match="is no MAC address"):
        parse_node(obj)


class NoVxlanKernel:
    """A kernel without VXLAN, as netlink answers: RTM_NEWLINK of kind vxlan is EOPNOTSUPP."""

    def __init__(self):
        self.created = []

    def links(self):
        return []

    def link_by_name(self, name):
        return None

    def _request(self, cls, msg_type, flags, fields, attrs):
        self.created.append(dict(attrs).get("IFLA_IFNAME"))
        raise NetlinkError(errno.EOPNOTSUPP)

    def close(self):
        pass


def test_a_kernel_without_vxlan_stops_the_agent_before_it_configures_anything(tmp_path, monkeypatch, capsys):
    from cni.agent import main, tunnel_host
    from cni.cli import _parser

    kernel = NoVxlanKernel()
    with pytest.raises(tunnel_host.TunnelError, match="mode vxlan needs vxlan devices and this kernel has none"):
        tunnel_host.require_kernel(kernel, TunnelOptions("vxlan"))
    tunnel_host.require_kernel(kernel, TunnelOptions("direct"))        # direct needs no tunnel
    kernel.created.clear()
    monkeypatch.setattr("cni.linux.links.open_rtnl", lambda: kernel)
    listing = tmp_path / "nodes.json"
    listing.write_text('{"items": []}')
    args = _parser().parse_args(["agent", "--node-name", "a", "--nodes-file", str(listing), "--from", "none",
                                 "--conf-dir", str(tmp_path / "net.d"), "--peers-file", str(tmp_path / "p.json"),
                                 "--data-dir", str(tmp_path / "ipam")])
    assert main.run(args) == 1
    assert "mode auto needs vxlan devices and this kernel has none" in capsys.readouterr().out
    assert kernel.created == ["pycni.probe"] and not (tmp_path / "net.d").exists()
    assert not (tmp_path / "p.json").exists()


def test_report_logs_counts_and_records_the_peers(tmp_path):
    from prometheus_client import generate_latest

    from cni.agent.metrics import Metrics
    from cni.agent.tunnel_host import report

    m = Metrics()
    o = plan("a", [A, B, C], TunnelOptions(mode="direct"), Facts(ON_LINK, 1500))
    assert report(o, str(tmp_path / "peers.json"), m) == "2 direct, 0 vxlan, 2 unreachable"
    text = generate_latest(m.registry).decode()
    assert 'pycni_agent_peers{mode="unreachable"} 2.0' in text and 'pycni_agent_peers{mode="direct"} 2.0' in text
    assert '"mode": "unreachable"' in (tmp_path / "peers.json").read_text()
