"""What ADD will make, decided without touching the system.

Rule: pure functions from (NetConf, request, IPAM result) to a `Plan`; `cni.bridge.apply` carries a plan
out and makes no decisions of its own. Tests compare plans as literals.
"""

from __future__ import annotations

import ipaddress

from cni.record import record
from cni.spec import names
from cni.bridge.config import NetConf
from cni.spec.result import DNS, IPConfig, IPInterface, Result, Route


@record
class Plan:
    bridge: str
    bridge_addresses: tuple[IPInterface, ...]   # gateway addresses when isGateway
    force_address: bool
    promisc: bool
    mtu: int | None
    host_veth: str
    host_alias: str
    hairpin: bool
    vlan: int | None
    netns: str
    ifname: str
    mac: str
    addresses: tuple[IPInterface, ...]
    routes: tuple[Route, ...]
    disable_dad: bool
    forward_families: tuple[int, ...]           # ip_forward on for these families


def _default_routes(conf: NetConf, ipam: Result) -> list[Route]:
    """isDefaultGateway: a default route per family with a gateway, unless IPAM gave one."""
    if not conf.is_default_gateway:
        return []
    have = {r.dst.version for r in ipam.routes if r.dst.prefixlen == 0}
    out = []
    for ip in ipam.ips:
        fam = ip.family
        if ip.gateway is None or fam in have:
            continue
        have.add(fam)
        dst = ipaddress.ip_network("0.0.0.0/0" if fam == 4 else "::/0")
        out.append(Route(dst=dst, gw=ip.gateway))
    return out


def _with_gateways(routes: tuple[Route, ...], ips: tuple[IPConfig, ...]) -> tuple[Route, ...]:
    """A route without `gw` goes via the gateway of its family, as the reference does."""
    gws = {}
    for ip in ips:
        if ip.gateway is not None:
            gws.setdefault(ip.family, ip.gateway)
    return tuple(r if r.gw is not None or r.dst.version not in gws
                 else Route(r.dst, gws[r.dst.version], r.mtu, r.advmss, r.priority, r.table, r.scope)
                 for r in routes)


def result_routes(conf: NetConf, ipam: Result) -> tuple[Route, ...]:
    return tuple(ipam.routes) + tuple(_default_routes(conf, ipam))


def plan_add(conf: NetConf, container_id: str, netns: str, ifname: str, ipam: Result) -> Plan:
    gateways: list[IPInterface] = []
    if conf.is_gateway:
        for ip in ipam.ips:
            if ip.gateway is not None:
                gw = ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}")
                if gw not in gateways:
                    gateways.append(gw)
    families = tuple(sorted({ip.family for ip in ipam.ips})) if conf.is_gateway else ()
    return Plan(
        bridge=conf.bridge,
        bridge_addresses=tuple(gateways),
        force_address=conf.force_address,
        promisc=conf.promisc_mode,
        mtu=conf.mtu,
        host_veth=names.host_veth_name(conf.name, container_id, ifname),
        host_alias=names.attachment_alias(conf.name, container_id, ifname),
        hairpin=conf.hairpin_mode,
        vlan=conf.vlan,
        netns=netns,
        ifname=ifname,
        mac=conf.mac,
        addresses=tuple(ip.address for ip in ipam.ips),
        routes=_with_gateways(result_routes(conf, ipam), ipam.ips),
        disable_dad=not conf.enable_dad,
        forward_families=families,
    )


def final_dns(conf: NetConf, ipam: Result) -> DNS:
    """A config-level `dns` overrides the IPAM's."""
    return conf.dns if not conf.dns.is_empty() else ipam.dns
