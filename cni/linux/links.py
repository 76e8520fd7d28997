"""Link-level netlink steps every part of pycni shares (the bridge plugin, loopback, the agent):
open a socket in a namespace, look a link up, read its addresses, delete it, and turn a netlink
failure into a CNIError that names the step.

Rule: idempotent where it can be (looking up or deleting what is gone is not an error); nothing
here decides anything about a plan. Netlink goes through `cni.linux.rtnl`, imported on first use.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from cni.linux.netns import entered
from cni.spec.errors import CNIError
from cni.spec.result import IPInterface


def open_rtnl() -> Any:
    from cni.linux.rtnl import Rtnl  # lazy: rtnl (pyroute2's message classes) only when netlink is used

    return Rtnl()


def open_rtnl_in(path: str) -> Any:
    """A netlink socket bound to the namespace at `path` (it stays there after we return)."""
    with entered(path):
        return open_rtnl()


def netlink_errno(e: BaseException) -> int | None:
    return getattr(e, "code", None) if type(e).__name__ == "NetlinkError" else getattr(e, "errno", None)


def failed(step: str, e: BaseException) -> CNIError:
    code = netlink_errno(e)
    detail = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    return CNIError(f"failed to {step}", f"{e} {detail}".strip())


def attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


def link_kind(msg: Any) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""


def lookup(ipr: Any, ifname: str) -> Any | None:
    """The link message of `ifname`, or None."""
    try:
        return ipr.link_by_name(ifname)
    except Exception as e:
        if netlink_errno(e) is None:
            raise                 # not the kernel's answer: a bug, reported with its traceback
        raise failed(f"look up link {ifname}", e) from e


def family(version: int) -> int:
    """The socket address family of IP version 4 or 6."""
    return socket.AF_INET if version == 4 else socket.AF_INET6


def addresses_of(ipr: Any, index: int) -> list[IPInterface]:
    out = []
    for msg in ipr.addresses(index):
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if local:
            out.append(ipaddress.ip_interface(f"{local}/{msg['prefixlen']}"))
    return out


def delete_link(ipr: Any, ifname: str, *, until: str = "returned") -> bool:
    """Remove `ifname`; False when it was not there. `until="unregistered"` returns once the
    kernel has taken the link out (see `Rtnl.unregister_link`), not when its deletion returns."""
    msg = lookup(ipr, ifname)
    if msg is None:
        return False
    try:
        if until == "unregistered":
            ipr.unregister_link(msg["index"])
        else:
            ipr.delete_link(msg["index"])
    except Exception as e:
        if netlink_errno(e) in (errno.ENODEV, errno.ENOENT):
            return False
        raise failed(f"delete link {ifname}", e) from None
    return True


def flush_neighbours(ipr: Any, ifname: str, ips) -> int:
    """Remove the neighbour entries of `ips` on `ifname` (a departed pod's addresses on its
    bridge: the next owner of an address is reachable at once, not after the stale entry ages
    out); the number removed. Missing entries and a missing link are fine."""
    msg = lookup(ipr, ifname)
    if msg is None:
        return 0
    removed = 0
    for ip in ips:
        try:
            ipr.del_neighbour(msg["index"], str(ip))
            removed += 1
        except Exception as e:
            if netlink_errno(e) not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                raise failed(f"remove the neighbour entry of {ip} on {ifname}", e) from None
    return removed
