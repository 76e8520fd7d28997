"""Netlink for the agent's overlay, beside `cni.linux.rtnl` (whose socket and transport it uses):
a VXLAN device, its forwarding database (FDB: inner MAC -> outer destination), neighbour entries
(inner address -> MAC), routes through a device with `onlink`, and the kernel's own route lookup
(what `ip route get ADDR` asks). Never on the per-pod path: only the agent imports this module.

Rule: as in rtnl, the kernel's refusals come back as `NetlinkError` with its errno; callers decide.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from cni.linux.links import family, link_kind
from cni.linux.rtnl import (NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
                            RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTM_GETROUTE, RTM_NEWLINK, RTM_NEWROUTE,
                            RTN_UNICAST, NetlinkError, ifinfmsg, rtmsg)

# rtnl has made `pyroute2` importable without its package __init__: the neighbour message class
from pyroute2.netlink.rtnl.ndmsg import ndmsg  # noqa: E402

RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
AF_BRIDGE = getattr(socket, "AF_BRIDGE", 7)
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x4
ENETUNREACH, EHOSTUNREACH = 101, 113


@dataclass(frozen=True)
class Vxlan:
    """What a VXLAN device is, as far as the agent cares."""
    vni: int
    port: int
    local: str                 # the outer source address (this node's InternalIP of the underlay's family)
    learning: bool = False


@dataclass(frozen=True)
class RouteLookup:
    """The kernel's answer to `ip route get ADDR`."""
    oif: int
    gateway: str = ""          # empty: the destination is on-link (no router in between)
    prefsrc: str = ""


def _ask(ipr, cls, msg_type: int, flags: int, fields: dict, attrs: list) -> list:
    return ipr._request(cls, msg_type, flags, fields, attrs)


# ------------------------------------------------------------------ the device

def create_vxlan(ipr, name: str, spec: Vxlan, *, mtu: int | None = None, mac: str = "") -> None:
    v6 = ":" in spec.local
    data = [("IFLA_VXLAN_ID", spec.vni), ("IFLA_VXLAN_LOCAL6" if v6 else "IFLA_VXLAN_LOCAL", spec.local),
            ("IFLA_VXLAN_PORT", spec.port), ("IFLA_VXLAN_LEARNING", 1 if spec.learning else 0)]
    if v6:                     # checksums over IPv6 are mandatory unless both ends agree otherwise
        data.append(("IFLA_VXLAN_UDP_CSUM", 1))
    attrs: list = [("IFLA_IFNAME", name)]
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
    if mac:
        attrs.append(("IFLA_ADDRESS", mac))
    attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": data})]}))
    _ask(ipr, ifinfmsg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
         {"family": 0, "index": 0, "flags": 0, "change": 0}, attrs)


def vxlan_of(msg: Any) -> Vxlan | None:
    """The VXLAN settings of a link message; None when the link is not a VXLAN device."""
    if link_kind(msg) != "vxlan":
        return None
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    if data is None:
        return None
    local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6") or ""
    return Vxlan(int(data.get_attr("IFLA_VXLAN_ID") or 0), int(data.get_attr("IFLA_VXLAN_PORT") or 0),
                 str(local), bool(data.get_attr("IFLA_VXLAN_LEARNING")))


def set_mtu(ipr, index: int, mtu: int) -> None:
    _ask(ipr, ifinfmsg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK,
         {"family": 0, "index": index, "flags": 0, "change": 0}, [("IFLA_MTU", mtu)])


# ------------------------------------------------------------------ FDB and neighbours

def _neigh(ipr, msg_type: int, af: int, index: int, attrs: list, flags: int = 0) -> None:
    extra = NLM_F_CREATE | NLM_F_REPLACE if msg_type == RTM_NEWNEIGH else 0
    _ask(ipr, ndmsg, msg_type, NLM_F_REQUEST | NLM_F_ACK | extra,
         {"family": af, "ifindex": index, "state": NUD_PERMANENT, "flags": flags, "ndm_type": 0}, attrs)


def _dump_neigh(ipr, af: int, index: int) -> list:
    # the kernel filters a neighbour dump by NDA_IFINDEX; an FDB dump by the header's ifindex
    header, attrs = (index, []) if af == AF_BRIDGE else (0, [("NDA_IFINDEX", index)])
    msgs = _ask(ipr, ndmsg, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP,
                {"family": af, "ifindex": header, "state": 0, "flags": 0, "ndm_type": 0}, attrs)
    return [m for m in msgs if m["ifindex"] == index]


def fdb(ipr, index: int) -> dict[str, str]:
    """The device's permanent FDB entries with an outer destination: {MAC: destination address}."""
    out = {}
    for m in _dump_neigh(ipr, AF_BRIDGE, index):
        mac, dst = m.get_attr("NDA_LLADDR"), m.get_attr("NDA_DST")
        if mac and dst and m["state"] & NUD_PERMANENT:
            out[mac.lower()] = str(ipaddress.ip_address(dst))
    return out


def replace_fdb(ipr, index: int, mac: str, dst: str) -> None:
    """`bridge fdb replace MAC dev DEV dst DST self permanent`."""
    _neigh(ipr, RTM_NEWNEIGH, AF_BRIDGE, index, [("NDA_LLADDR", mac), ("NDA_DST", dst)], NTF_SELF)


def delete_fdb(ipr, index: int, mac: str, dst: str) -> None:
    _neigh(ipr, RTM_DELNEIGH, AF_BRIDGE, index, [("NDA_LLADDR", mac), ("NDA_DST", dst)], NTF_SELF)


def neighbours(ipr, index: int) -> dict[str, str]:
    """The device's permanent neighbour entries, both families: {address: MAC}."""
    out = {}
    for version in (4, 6):
        for m in _dump_neigh(ipr, family(version), index):
            dst, mac = m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")
            if dst and mac and m["state"] & NUD_PERMANENT:
                out[str(ipaddress.ip_address(dst))] = mac.lower()
    return out


def replace_neighbour(ipr, index: int, address: str, mac: str) -> None:
    """`ip neigh replace ADDRESS lladdr MAC dev DEV nud permanent`."""
    _neigh(ipr, RTM_NEWNEIGH, family(6 if ":" in address else 4), index,
           [("NDA_DST", address), ("NDA_LLADDR", mac)])


def delete_neighbour(ipr, index: int, address: str) -> None:
    _neigh(ipr, RTM_DELNEIGH, family(6 if ":" in address else 4), index, [("NDA_DST", address)])


# ------------------------------------------------------------------ routes

def route_get(ipr, address: str) -> RouteLookup | None:
    """The route the kernel would take to `address` now; None when it has none (unreachable)."""
    version = 6 if ":" in address else 4
    try:
        reply = _ask(ipr, rtmsg, RTM_GETROUTE, NLM_F_REQUEST,
                     {"family": family(version), "dst_len": 32 if version == 4 else 128, "src_len": 0, "tos": 0,
                      "table": 0, "proto": 0, "scope": 0, "type": 0, "flags": 0},
                     [("RTA_DST", address)])
    except NetlinkError as e:
        if e.code in (ENETUNREACH, EHOSTUNREACH, 22):   # EINVAL: e.g. a family with no routes at all
            return None
        raise
    if not reply:
        return None
    msg = reply[0]
    if msg["type"] != RTN_UNICAST:      # local, blackhole, prohibit, ...: no way out to a peer
        return None
    return RouteLookup(int(msg.get_attr("RTA_OIF") or 0), str(msg.get_attr("RTA_GATEWAY") or ""),
                       str(msg.get_attr("RTA_PREFSRC") or ""))


def replace_onlink_route(ipr, dst: str, dst_len: int, gateway: str, oif: int, proto: int) -> None:
    """`ip route replace DST/LEN via GATEWAY dev OIF onlink proto PROTO`: the gateway is taken as
    reachable on OIF without a connected route to it (a tunnel peer's address)."""
    version = 6 if ":" in dst else 4
    _ask(ipr, rtmsg, RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
         {"family": family(version), "dst_len": dst_len, "src_len": 0, "tos": 0, "table": RT_TABLE_MAIN,
          "proto": proto, "scope": RT_SCOPE_UNIVERSE, "type": RTN_UNICAST, "flags": RTNH_F_ONLINK},
         [("RTA_DST", dst), ("RTA_GATEWAY", gateway), ("RTA_OIF", oif)])
