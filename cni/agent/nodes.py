"""Pure decisions of the agent: from Node objects (as the Kubernetes API serves them, JSON) to
what this node should have. No I/O here."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cni.spec.result import IPAddress, IPNetwork
from cni.agent import tunnel
from cni.agent.tunnel import Facts, Overlay, TunnelOptions

DEFAULT_NETWORK = "pycni"
DEFAULT_BRIDGE = "pycni0"
DEFAULT_DATA_DIR = "/run/pycni/ipam"     # tmpfs: a reboot releases every address with the pods
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    internal_ips: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()
    vtep_mac: str = ""          # annotation pycni.io/vtep-mac: its VXLAN device's MAC, as its agent published it


class NodeError(ValueError):
    pass


def parse_node(obj: Mapping[str, Any]) -> NodeInfo:
    """A v1.Node in the API's JSON: metadata.name, spec.podCIDRs (or the older spec.podCIDR),
    status.addresses of type InternalIP."""
    meta, spec, status = (obj.get(k) or {} for k in ("metadata", "spec", "status"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise NodeError("a Node without metadata.name")
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    try:
        pod_cidrs = tuple(ipaddress.ip_network(c, strict=True) for c in cidrs)
        ips = tuple(ipaddress.ip_address(a["address"]) for a in status.get("addresses") or ()
                    if a.get("type") == "InternalIP")
    except (ValueError, KeyError, TypeError) as e:
        raise NodeError(f"node {name}: {e}") from None
    mac = str((meta.get("annotations") or {}).get(tunnel.ANNOTATION_MAC) or "").lower()
    if mac and not _MAC.fullmatch(mac):
        raise NodeError(f"node {name}: annotation {tunnel.ANNOTATION_MAC} {mac!r} is no MAC address")
    return NodeInfo(name, ips, pod_cidrs, mac)


def parse_node_list(obj: Mapping[str, Any]) -> list[NodeInfo]:
    """A v1.NodeList, or a bare list of Nodes."""
    items = obj.get("items") if isinstance(obj, Mapping) else obj
    return [parse_node(n) for n in items or ()]


@dataclass(frozen=True)
class Options:
    network: str = DEFAULT_NETWORK
    bridge: str = DEFAULT_BRIDGE
    data_dir: str = DEFAULT_DATA_DIR
    mtu: int | None = None
    cluster_cidrs: tuple[IPNetwork, ...] = ()   # e.g. kind's podSubnet; nodes' podCIDRs are added
    masquerade: bool = True
    policy_dir: str | None = None              # NetworkPolicy enforced: the plugin's state dir
    tunnel: TunnelOptions = TunnelOptions()    # how peers are reached (cni/agent/tunnel.py)


def conflist(me: NodeInfo, opts: Options, mtu: int | None = None) -> dict:
    """The node's conflist: a pycni bridge over its podCIDRs (one range set per family), then port
    mapping; the pods' bandwidth annotations shape them in the same ADD. Masquerade is the agent's
    (cluster-wide), not the plugin's (per-pod ipMasq would masquerade pod-to-pod traffic between
    nodes). MTU: an explicit `opts.mtu`, else `mtu` (the uplink's, less the tunnel's overhead when a
    peer needs it), else the plugin's default."""
    if not me.pod_cidrs:
        raise NodeError(f"node {me.name} has no spec.podCIDRs yet")
    families = sorted({c.version for c in me.pod_cidrs})
    bridge: dict[str, Any] = {
        "type": "pycni", "bridge": opts.bridge, "isGateway": True, "isDefaultGateway": True,
        "hairpinMode": True, "ipMasq": False,
        "capabilities": {"portMappings": True, "bandwidth": True},
        "ipam": {
            "type": "pycni-ipam", "dataDir": opts.data_dir,
            "ranges": [[{"subnet": str(c)}] for c in me.pod_cidrs],
            "routes": [{"dst": "0.0.0.0/0" if v == 4 else "::/0"} for v in families],
        },
    }
    if opts.mtu or mtu:
        bridge["mtu"] = opts.mtu or mtu
    if opts.policy_dir:
        bridge["networkPolicy"] = opts.policy_dir
    return {"cniVersion": "1.0.0", "name": opts.network, "plugins": [bridge]}


def peer_routes(me: str, nodes: Iterable[NodeInfo]) -> dict[IPNetwork, IPAddress]:
    """Every other node's pod CIDRs, each via that node's InternalIP of the same family. Left out:
    a CIDR whose node has no such address, and families this node has no InternalIP of (the
    gateway would be unreachable)."""
    nodes = list(nodes)
    mine = next((n for n in nodes if n.name == me), None)
    families = {ip.version for ip in mine.internal_ips} if mine and mine.internal_ips else {4, 6}
    routes: dict[IPNetwork, IPAddress] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name == me:
            continue
        for cidr in node.pod_cidrs:
            if cidr.version not in families:
                continue
            via = next((ip for ip in node.internal_ips if ip.version == cidr.version), None)
            if via is not None:
                routes.setdefault(cidr, via)
    return routes


def pod_networks(nodes: Iterable[NodeInfo], opts: Options) -> tuple[IPNetwork, ...]:
    """Where pods live, cluster-wide: traffic from these to anything else is masqueraded."""
    nets = set(opts.cluster_cidrs)
    for node in nodes:
        nets.update(node.pod_cidrs)
    collapsed = [n for v in (4, 6) for n in ipaddress.collapse_addresses(
        sorted(x for x in nets if x.version == v))]
    return tuple(collapsed)


@dataclass(frozen=True)
class Desired:
    conflist: dict | None
    routes: dict[IPNetwork, IPAddress] = field(default_factory=dict)    # direct: via the peer's InternalIP
    pod_networks: tuple[IPNetwork, ...] = ()
    overlay: Overlay | None = None      # with the kernel's facts: modes per peer, the tunnel's entries


def desired(me: str, nodes: Iterable[NodeInfo], opts: Options, facts: Facts | None = None) -> Desired:
    """Without `facts` (the kernel's routes to the peers), every peer gets the direct route;
    with them, each gets what cni.agent.tunnel decides."""
    nodes = list(nodes)
    mine = next((n for n in nodes if n.name == me), None)
    masq = pod_networks(nodes, opts) if opts.masquerade else ()
    if facts is None:
        conf = conflist(mine, opts) if mine is not None and mine.pod_cidrs else None
        return Desired(conf, peer_routes(me, nodes), masq)
    overlay = tunnel.plan(me, nodes, opts.tunnel, facts)
    conf = conflist(mine, opts, overlay.pod_mtu) if mine is not None and mine.pod_cidrs else None
    routes = {p.cidr: p.via for p in overlay.peers if p.mode == "direct"}
    return Desired(conf, routes, masq, overlay)
