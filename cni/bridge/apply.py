"""Carries out a `Plan` with netlink (pyroute2); the kernel-facing half of ADD, DEL and CHECK.

Rule: no decisions here, only idempotent steps: EEXIST is fine when the thing is what we want,
ENOENT/ENODEV on removal is success. Every netlink failure leaves as a CNIError naming the step.
Netlink goes through `cni.linux.rtnl` (pyroute2's message classes on a plain socket), imported on
first use, so commands that never touch links never pay for it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from typing import Any, Iterable

from cni.record import record
from cni.spec import names
from cni.linux import netns, sysctl
from cni.linux.links import (addresses_of, attr, delete_link, failed, family, link_kind, lookup, netlink_errno,
                              open_rtnl)
from cni.spec.errors import CNIError, InvalidConfig, UnsupportedField
from cni.spec.log import log
from cni.bridge.plan import Plan
from cni.spec.result import IPInterface, Route

IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
IFA_F_NODAD = 0x02


# ---------------------------------------------------------------- bridge


@record
class LinkInfo:
    name: str
    index: int
    mac: str
    mtu: int


def _info(msg: Any) -> LinkInfo:
    return LinkInfo(attr(msg, "IFLA_IFNAME", ""), msg["index"], attr(msg, "IFLA_ADDRESS", ""),
                    attr(msg, "IFLA_MTU", 0))


def ensure_bridge(ipr: Any, plan: Plan) -> LinkInfo:
    msg = lookup(ipr, plan.bridge)
    if msg is None:
        try:
            ipr.create_bridge(plan.bridge, plan.mtu)
        except Exception as e:
            if netlink_errno(e) != errno.EEXIST:  # a concurrent ADD made it first
                raise failed(f"create bridge {plan.bridge}", e) from None
        msg = lookup(ipr, plan.bridge)
        if msg is None:
            raise CNIError(f"bridge {plan.bridge} vanished while being set up")
        # Pin the MAC: otherwise the bridge takes the lowest port MAC and changes as pods come and go.
        try:
            ipr.set_link(msg["index"], address=attr(msg, "IFLA_ADDRESS"))
            sysctl.write(sysctl.iface_key(6, plan.bridge, "accept_ra"), "0")
        except Exception as e:
            raise failed(f"configure bridge {plan.bridge}", e) from None
    elif link_kind(msg) != "bridge":
        raise InvalidConfig(f"{plan.bridge} already exists but is not a bridge",
                            f"it is a {link_kind(msg) or 'device of unknown kind'}")
    index = msg["index"]
    flags = msg["flags"]
    IFF_UP, IFF_PROMISC = 0x1, 0x100
    try:
        if plan.promisc and not flags & IFF_PROMISC:
            ipr.set_link(index, promisc=True)
        if not flags & IFF_UP:
            ipr.set_link(index, up=True)
    except Exception as e:
        raise failed(f"bring up bridge {plan.bridge}", e) from None
    return _info(msg)


def ensure_bridge_addresses(ipr: Any, bridge: LinkInfo, plan: Plan) -> None:
    if not plan.bridge_addresses:
        return
    existing = addresses_of(ipr, bridge.index)
    for want in plan.bridge_addresses:
        if want in existing:
            continue
        if want.version == 4:
            conflicting = [a for a in existing if a.version == 4]
        else:
            conflicting = [a for a in existing if a.version == 6 and a.network.overlaps(want.network)
                           and not a.ip.is_link_local]
        for old in conflicting:
            if not plan.force_address:
                raise CNIError(f"{plan.bridge} already has an IP address different from {want}",
                               f"it has {old}; set forceAddress to replace it")
            try:
                ipr.del_address(bridge.index, str(old.ip), old.network.prefixlen)
            except Exception as e:
                if netlink_errno(e) not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                    raise failed(f"remove {old} from {plan.bridge}", e) from None
        try:
            # no DAD for the gateway: it is ours, and a tentative gateway blackholes the first pods
            ipr.add_address(bridge.index, str(want.ip), want.network.prefixlen,
                            IFA_F_NODAD if want.version == 6 else 0)
        except Exception as e:
            if netlink_errno(e) != errno.EEXIST:  # a concurrent ADD put it there first
                raise failed(f"add {want} to {plan.bridge}", e) from None
    for fam in plan.forward_families:
        sysctl.write("net/ipv4/ip_forward" if fam == 4 else "net/ipv6/conf/all/forwarding", "1")


# ---------------------------------------------------------------- veth


def create_veth(ipr: Any, plan: Plan, netns_fd: int) -> None:
    try:
        ipr.create_veth(plan.host_veth, plan.ifname, netns_fd, plan.mtu, plan.mac)
    except Exception as e:
        if netlink_errno(e) == errno.EEXIST:
            raise CNIError("failed to create veth pair",
                           f"host interface {plan.host_veth} already exists: is the attachment "
                           "already added? DEL it first") from None
        raise failed(f"create veth pair {plan.host_veth}/{plan.ifname}", e) from None


def attach_host_veth(ipr: Any, plan: Plan, bridge: LinkInfo) -> LinkInfo:
    msg = lookup(ipr, plan.host_veth)
    if msg is None:
        raise CNIError(f"host veth {plan.host_veth} vanished after creation")
    index = msg["index"]
    try:
        ipr.set_link(index, master=bridge.index, alias=plan.host_alias)
        if plan.hairpin:
            ipr.set_hairpin(index)
        if plan.vlan:
            _set_vlan(plan, bridge, index)
        ipr.set_link(index, up=True)
    except CNIError:
        raise
    except Exception as e:
        raise failed(f"attach {plan.host_veth} to {plan.bridge}", e) from None
    sysctl.write(sysctl.iface_key(6, plan.host_veth, "accept_ra"), "0")
    return _info(msg)


def _set_vlan(plan: Plan, bridge: LinkInfo, index: int) -> None:
    """VLAN filtering is rare: it goes through pyroute2's full IPRoute, imported only here."""
    from pyroute2.iproute.linux import IPRoute  # lazy: VLAN filtering only: pyroute2's full IPRoute

    ipr = IPRoute()
    try:
        ipr.link("set", index=bridge.index, kind="bridge", br_vlan_filtering=1)
        ipr.vlan_filter("del", index=index, vlan_info={"vid": 1})
        ipr.vlan_filter("add", index=index, vlan_info={"vid": plan.vlan, "flags": ["pvid", "untagged"]})
    except Exception as e:
        if netlink_errno(e) == errno.EOPNOTSUPP:
            raise UnsupportedField("unsupported field: vlan",
                                   f"vlan={plan.vlan}: this kernel has no bridge VLAN filtering") from None
        raise
    finally:
        ipr.close()


# ---------------------------------------------------------------- container side


def configure_container(plan: Plan, ipr: Any) -> LinkInfo:
    """The pod side: sysctls (inside the namespace), addresses, link up, routes.

    `ipr` is a netlink socket opened inside the pod namespace (`open_rtnl_in`)."""
    has_v6 = any(a.version == 6 for a in plan.addresses)
    with netns.entered(plan.netns):
        if has_v6:
            sysctl.write(sysctl.iface_key(6, plan.ifname, "disable_ipv6"), "0")
            sysctl.write(sysctl.iface_key(6, plan.ifname, "keep_addr_on_down"), "1")
            if plan.disable_dad:
                sysctl.write(sysctl.iface_key(6, plan.ifname, "accept_dad"), "0")
        sysctl.write(sysctl.iface_key(4, plan.ifname, "arp_notify"), "1")
    msg = lookup(ipr, plan.ifname)
    if msg is None:
        raise CNIError(f"{plan.ifname} did not appear in {plan.netns}")
    index = msg["index"]
    for a in plan.addresses:
        try:
            ipr.add_address(index, str(a.ip), a.network.prefixlen)
        except Exception as e:
            raise failed(f"add address {a} to {plan.ifname}", e) from None
    try:
        ipr.set_link(index, up=True)
    except Exception as e:
        raise failed(f"bring up {plan.ifname}", e) from None
    for r in plan.routes:
        add_route(ipr, index, r)
    if has_v6 and not plan.disable_dad:
        settle_addresses(ipr, index)
    return _info(msg)


def add_route(ipr: Any, index: int, r: Route) -> None:
    try:
        ipr.add_route(family(r.dst.version),
                      str(r.dst.network_address), r.dst.prefixlen, index,
                      gateway=str(r.gw) if r.gw is not None else None, priority=r.priority,
                      table=r.table, scope=r.scope, mtu=r.mtu, advmss=r.advmss)
    except Exception as e:
        if netlink_errno(e) != errno.EEXIST:
            raise failed(f"add route {r.dst} via {r.gw}", e) from None


def settle_addresses(ipr: Any, index: int, timeout: float = 5.0) -> None:
    """With DAD kept on, wait until no IPv6 address is tentative (as the reference does)."""
    deadline = time.monotonic() + timeout
    while True:
        flags = [attr(m, "IFA_FLAGS", m["flags"]) for m in ipr.addresses(index, socket.AF_INET6)]
        if any(f & IFA_F_DADFAILED for f in flags):
            raise CNIError("IPv6 duplicate address detection failed")
        if not any(f & IFA_F_TENTATIVE for f in flags):
            return
        if time.monotonic() > deadline:
            raise CNIError("IPv6 addresses still tentative after 5s")
        time.sleep(0.05)


def wait_port_up(ipr: Any, index: int, timeout: float = 2.0) -> None:
    """The bridge port must be up (carrier) before traffic flows; usually it is at once."""
    delay, deadline = 0.005, time.monotonic() + timeout
    while True:
        link = ipr.link_by_index(index)
        if link is not None and attr(link, "IFLA_OPERSTATE", "") in ("UP", "UNKNOWN"):
            return
        if time.monotonic() > deadline:
            raise CNIError("bridge port in error state", f"link {index} is not up after {timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# ---------------------------------------------------------------- DEL / GC


@record
class PodEnd:
    """The pod's interface as seen from inside its namespace."""
    index: int
    peer: int           # IFLA_LINK: a veth's peer, by its index in the peer's namespace (0: none)
    addresses: tuple


def pod_end(path: str, ifname: str) -> PodEnd | None:
    """`ifname` in the pod namespace at `path`, or None when it or the namespace is gone."""
    try:
        with netns.entered(path):
            ipr = open_rtnl()
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):     # not a namespace any more: gone
            return None
        raise
    try:
        msg = lookup(ipr, ifname)
        if msg is None:
            return None
        return PodEnd(msg["index"], attr(msg, "IFLA_LINK", 0), tuple(addresses_of(ipr, msg["index"])))
    finally:
        ipr.close()


def host_end(ipr: Any, pod: PodEnd, bridge: str) -> Any | None:
    """The host end of the pod's veth whatever its name (the reference names it vethXXXXXXXX):
    the link at the pod interface's peer index that is a veth, names the pod interface as its own
    peer in another namespace, and is a port of `bridge`; else None."""
    if not pod.peer:
        return None
    try:
        msg = ipr.link_by_index(pod.peer)
    except Exception as e:
        if netlink_errno(e) in (errno.ENODEV, errno.ENOENT):
            return None
        raise failed(f"look up link {pod.peer}", e) from None
    if msg is None or link_kind(msg) != "veth" or attr(msg, "IFLA_LINK") != pod.index \
            or msg.get_attr("IFLA_LINK_NETNSID") is None:
        return None
    br = lookup(ipr, bridge)
    if br is None or msg.get_attr("IFLA_MASTER") != br["index"]:
        return None
    return msg


def attachments_on_host(ipr: Any, network: str) -> list[tuple[str, str]]:
    """(host veth, attachment hash) of every host veth this network made, found by its alias."""
    out = []
    for msg in ipr.links():
        alias = msg.get_attr("IFLA_IFALIAS")
        h = names.alias_attachment_hash(alias, network) if alias else None
        if h:
            out.append((attr(msg, "IFLA_IFNAME", ""), h))
    return out


def delete_host_veth(ipr: Any, network: str, container_id: str, ifname: str) -> bool:
    """Remove the attachment's host veth (its pod end goes with it), only if it is pycni's: it
    carries the attachment's alias, or (an ADD killed between creating the pair and naming it) it
    is a veth with the attachment's hashed name and no alias at all. Any other link is left alone.
    False when there was none."""
    name = names.host_veth_name(network, container_id, ifname)
    msg = lookup(ipr, name)
    if msg is None:
        return False
    alias = msg.get_attr("IFLA_IFALIAS") or ""
    ours = alias == names.attachment_alias(network, container_id, ifname) or \
        (not alias and link_kind(msg) == "veth")
    if not ours:
        log.warning(f"{name} is not this attachment's veth (alias {alias!r}, kind {link_kind(msg)!r}): "
                    "left alone")
        return False
    return delete_link(ipr, name, until="unregistered")   # the pod end goes in the same step


# ---------------------------------------------------------------- CHECK


def container_state(path: str, ifname: str) -> tuple[Any, list[IPInterface], list[Any]] | None:
    """(link message, addresses, routes) of `ifname` in the namespace, or None."""
    with netns.entered(path):
        ipr = open_rtnl()
    try:
        msg = lookup(ipr, ifname)
        if msg is None:
            return None
        routes = ipr.routes(socket.AF_INET) + ipr.routes(socket.AF_INET6)
        return msg, addresses_of(ipr, msg["index"]), routes
    finally:
        ipr.close()


def route_present(routes: Iterable[Any], index: int, r: Route) -> bool:
    for m in routes:
        dst = m.get_attr("RTA_DST")
        net = f"{dst}/{m['dst_len']}" if dst else ("0.0.0.0/0" if m["family"] == socket.AF_INET else "::/0")
        if ipaddress.ip_network(net, strict=False) != r.dst:
            continue
        if m.get_attr("RTA_OIF") not in (None, index):
            continue
        gw = m.get_attr("RTA_GATEWAY")
        if r.gw is not None and (gw is None or ipaddress.ip_address(gw) != r.gw):
            continue
        return True
    return False
