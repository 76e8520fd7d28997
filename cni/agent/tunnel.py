"""Pure decisions of the agent about reaching other nodes' pods: per peer pod CIDR, a direct route
(the peer is on-link), a route through this node's VXLAN device (a router is in between, or the
mode says so), or nothing (unreachable, and why). Also the MTU the node's pods get. No I/O here:
the kernel's answers (`ip route get` of every peer address, the MTUs of the interfaces they leave
by) come in as `Facts`, gathered by cni/agent/tunnel_host.py.

    direct   podCIDR via <peer InternalIP>                       (the kernel picks the uplink)
    vxlan    podCIDR via <peer tunnel address> dev <vxlan> onlink
             neighbour <peer tunnel address> -> <peer VTEP MAC>   (no ARP/ND over the tunnel)
             FDB <peer VTEP MAC> -> <peer InternalIP>              (no learning, no flooding)

A node's tunnel address is the first address of each of its pod CIDRs (10.244.1.0 for
10.244.1.0/24), never handed to a pod; its VTEP MAC is published on its Node as the annotation
`pycni.io/vtep-mac` and, for a node that has not published one (yet), derived from its name the
same way its agent derives it when creating the device.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from cni.spec.result import IPAddress, IPNetwork

MODES = ("auto", "direct", "vxlan")
ANNOTATION_MAC = "pycni.io/vtep-mac"
DEFAULT_DEVICE = "pycni.vxlan"
DEFAULT_VNI = 4242
DEFAULT_PORT = 4789            # IANA's VXLAN port (Linux's own default, 8472, is flannel's)
OVERHEAD = {4: 50, 6: 70}      # outer IPv4/IPv6 header + UDP + VXLAN + the inner Ethernet header


@dataclass(frozen=True)
class TunnelOptions:
    mode: str = "auto"
    device: str = DEFAULT_DEVICE
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT


@dataclass(frozen=True)
class Reach:
    """The kernel's route to one underlay address: the interface it leaves by (and its MTU), and
    the router it goes through ('' when on-link)."""
    dev: str
    mtu: int
    gateway: str = ""


@dataclass(frozen=True)
class Facts:
    reach: Mapping[str, Reach | None] = field(default_factory=dict)   # underlay address -> route (None: none)
    default_mtu: int | None = None     # the MTU of the default route's interface, if there is one
    own_mac: str = ""                  # the MAC of this node's VXLAN device, when it exists already


@dataclass(frozen=True)
class Peer:
    node: str
    cidr: IPNetwork
    mode: str                      # direct, vxlan, unreachable
    via: IPAddress | None = None   # direct: the peer's InternalIP; vxlan: its tunnel address
    outer: IPAddress | None = None  # vxlan: the outer destination (the peer's InternalIP)
    mac: str = ""                  # vxlan: the peer's VTEP MAC
    why: str = ""                  # unreachable: the reason, for the log and `pycni inspect`
    dev: str = ""                  # the interface the packets (outer ones for vxlan) leave by


@dataclass(frozen=True)
class Device:
    name: str
    vni: int
    port: int
    local: IPAddress               # outer source: this node's InternalIP of the underlay's family
    mac: str
    mtu: int
    addresses: tuple[IPNetwork, ...]   # this node's tunnel addresses (/32, /128)


@dataclass(frozen=True)
class Overlay:
    node: str
    mode: str
    device_name: str
    device: Device | None          # None: mode direct, or this node has no InternalIP (yet)
    peers: tuple[Peer, ...] = ()
    tunnel_routes: Mapping[IPNetwork, IPAddress] = field(default_factory=dict)   # via the device, onlink
    fdb: Mapping[str, IPAddress] = field(default_factory=dict)                   # peer MAC -> outer address
    neighbours: Mapping[IPAddress, str] = field(default_factory=dict)            # tunnel address -> MAC
    pod_mtu: int | None = None
    published_mac: str = ""        # what this node's Node object says now (the agent republishes if wrong)


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for `node`'s VXLAN device (a restart or a
    recreated device keeps it, so peers' FDB entries stay right)."""
    h = bytearray(hashlib.sha256(b"pycni-vtep/" + node.encode()).digest()[:6])
    h[0] = (h[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in h)


def tunnel_address(cidr: IPNetwork) -> IPAddress:
    return cidr.network_address


def _first(ips: Iterable[IPAddress], version: int) -> IPAddress | None:
    return next((ip for ip in ips if ip.version == version), None)


def plan(me: str, nodes: Iterable, opts: TunnelOptions, facts: Facts) -> Overlay:
    """Per peer pod CIDR: direct where the peer's InternalIP of that family is on-link (mode
    auto/direct), VXLAN elsewhere (auto) or always (vxlan); unreachable when neither works."""
    nodes = sorted(nodes, key=lambda n: n.name)
    mine = next((n for n in nodes if n.name == me), None)
    local = mine.internal_ips[0] if mine is not None and mine.internal_ips else None
    peers: list[Peer] = []
    for node in nodes:
        if node.name == me:
            continue
        for cidr in node.pod_cidrs:
            peers.append(_decide(node, cidr, opts.mode, local, facts))
    tunnel = [p for p in peers if p.mode == "vxlan"]
    uplinks = [facts.reach[str(p.outer if p.mode == "vxlan" else p.via)] for p in peers
               if p.mode != "unreachable"]
    uplink = min((r.mtu for r in uplinks if r is not None), default=None) or facts.default_mtu
    device = None
    if opts.mode != "direct" and local is not None:
        device = Device(opts.device, opts.vni, opts.port, local, facts.own_mac or vtep_mac(me),
                        (uplink or 1500) - OVERHEAD[local.version],
                        tuple(ipaddress.ip_network(tunnel_address(c)) for c in mine.pod_cidrs))
    pod_mtu = uplink
    if uplink and device is not None and (tunnel or opts.mode == "vxlan"):
        pod_mtu = uplink - OVERHEAD[local.version]
    return Overlay(
        me, opts.mode, opts.device, device, tuple(peers),
        {p.cidr: p.via for p in tunnel},
        {p.mac: p.outer for p in tunnel},
        {p.via: p.mac for p in tunnel},
        pod_mtu, mine.vtep_mac if mine is not None else "")


def _decide(node, cidr: IPNetwork, mode: str, local: IPAddress | None, facts: Facts) -> Peer:
    name = node.name
    direct_ip = _first(node.internal_ips, cidr.version)
    reach = facts.reach.get(str(direct_ip)) if direct_ip is not None else None
    if mode != "vxlan" and reach is not None and not reach.gateway:
        return Peer(name, cidr, "direct", via=direct_ip, dev=reach.dev)
    if mode == "direct":
        if direct_ip is None:
            why = f"no IPv{cidr.version} InternalIP"
        elif reach is None:
            why = f"no route to {direct_ip}"
        else:
            why = f"{direct_ip} is not on-link (via {reach.gateway}); mode direct has no tunnel"
        return Peer(name, cidr, "unreachable", why=why)
    if local is None:
        return Peer(name, cidr, "unreachable", why="this node has no InternalIP to send the tunnel from")
    outer = _first(node.internal_ips, local.version)
    if outer is None:
        return Peer(name, cidr, "unreachable", why=f"no IPv{local.version} InternalIP (the tunnel's underlay)")
    outer_reach = facts.reach.get(str(outer))
    if outer_reach is None:
        return Peer(name, cidr, "unreachable", why=f"no route to {outer}")
    return Peer(name, cidr, "vxlan", via=tunnel_address(cidr), outer=outer,
                mac=node.vtep_mac or vtep_mac(name), dev=outer_reach.dev)


def underlay_addresses(me: str, nodes: Iterable) -> set[str]:
    """Every peer address the plan asks the kernel about."""
    return {str(ip) for n in nodes if n.name != me for ip in n.internal_ips}
