"""The ifb devices of per-pod egress shaping, found by name and mark without traffic control:
DEL of every attachment and GC look here, and neither needs pyroute2's tc messages for it.

Rule: a device is pycni's when it has the attachment's ifb name (`names.ifb_name`) and alias
(`pycni-bw/<network>/<id>/<ifname>`), or that name, kind ifb and no alias at all (an ADD killed
between creating and marking it). Anything else is left alone.
"""

from __future__ import annotations

import errno
from typing import Any

from cni.linux.links import attr, failed, link_kind, lookup, netlink_errno
from cni.spec import names
from cni.spec.log import log


def own_ifb(host: Any, network: str, container_id: str, ifname: str) -> Any | None:
    """The attachment's ifb device if it is pycni's: its name and alias, or (an ADD killed between
    creating and marking it) its name, kind ifb and no alias at all."""
    msg = lookup(host, names.ifb_name(network, container_id, ifname))
    if msg is None:
        return None
    alias = msg.get_attr("IFLA_IFALIAS") or ""
    if alias == names.attachment_alias(network, container_id, ifname, names.IFB_MARK) or \
            (not alias and link_kind(msg) == "ifb"):
        return msg
    log.warning(f"{attr(msg, 'IFLA_IFNAME')} is not this attachment's ifb (alias {alias!r}, kind "
                f"{link_kind(msg)!r}): left alone")
    return None


def _gone(e: BaseException) -> bool:
    return netlink_errno(e) in (errno.ENOENT, errno.ENODEV, errno.EINVAL)


def delete(host: Any, msg: Any) -> bool:
    """Returns once the kernel has unregistered the device (`Rtnl.unregister_link`), not when its
    deletion returns, as DEL does for the veth."""
    try:
        host.unregister_link(msg["index"])
    except Exception as e:
        if netlink_errno(e) in (errno.ENODEV, errno.ENOENT):
            return False
        raise failed(f"delete ifb device {attr(msg, 'IFLA_IFNAME')}", e) from None
    return True


def remove(host: Any, network: str, container_id: str, ifname: str) -> bool:
    """DEL: remove the attachment's ifb device if it is there and pycni's (its qdiscs go with
    it). True when one was removed."""
    msg = own_ifb(host, network, container_id, ifname)
    return msg is not None and delete(host, msg)


def ifbs_on_host(host: Any, network: str) -> list[tuple[str, str]]:
    """(ifb device, attachment hash) of every ifb device this network's shaping made."""
    out = []
    for msg in host.links():
        alias = msg.get_attr("IFLA_IFALIAS")
        h = names.alias_attachment_hash(alias, network, names.IFB_MARK) if alias else None
        if h and link_kind(msg) == "ifb":
            out.append((attr(msg, "IFLA_IFNAME", ""), h))
    return out


def gc(host: Any, network: str, keep: set[str]) -> list[str]:
    """Remove the ifb devices of `network` whose attachment hash is not in `keep`."""
    removed = []
    for name, att in ifbs_on_host(host, network):
        if att not in keep:
            log.info(f"gc: removing ifb {name} (attachment {att[:16]})")
            msg = lookup(host, name)
            if msg is not None and delete(host, msg):
                removed.append(name)
    return removed
