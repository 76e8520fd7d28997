"""Per-pod shaping in the kernel: make it (ADD), verify it (CHECK), remove it (DEL), collect the
ifb devices of attachments that are gone (GC), and describe it (inspect, explain).

What one attachment gets, on the host side of its interface ("the host veth"):
  ingress (towards the pod): a root tbf, handle 7063: (`options.TBF_HANDLE`);
  egress (from the pod): an ingress qdisc whose u32 filter at priority 0x7063 redirects every
  packet to the attachment's ifb device (`names.ifb_name`, alias `pycni-bw/<net>/<id>/<ifname>`),
  which carries a root tbf with the same handle.
The ifb devices alone (found, removed, collected by GC) are `cni.bandwidth.ifb`'s, which needs
no tc messages. Rule: pycni removes only what carries its marks (the tbf handle, the filter priority redirecting to
the attachment's ifb, the ifb's name and alias), never another's qdisc or device. Netlink goes
through `cni.linux.tc`, imported by this module: import this only when a call shapes.
"""

from __future__ import annotations

import errno
from typing import Any, Callable

from cni.bandwidth import ifb
from cni.bandwidth.options import REDIRECT_CLASSID, REDIRECT_PRIO, TBF_HANDLE, Shaping, Tbf, tbf, tick_in_usec
from cni.linux import tc
from cni.linux.links import attr, failed, lookup, netlink_errno
from cni.spec import names
from cni.spec.errors import CNIError
from cni.spec.log import log
from cni.spec.result import Interface

PSCHED = "/proc/net/psched"


def _ticks() -> float:
    with open(PSCHED) as f:
        return tick_in_usec(f.read())


def plan(shaping: Shaping) -> tuple[Tbf | None, Tbf | None]:
    """(ingress tbf, egress tbf) of `shaping`, None for a direction it leaves alone. Raises
    CNIError before anything is made when a burst does not fit its rate."""
    ticks = _ticks() if shaping.any else 1.0
    return (tbf(shaping.ingress_rate, shaping.ingress_burst, ticks) if shaping.ingress else None,
            tbf(shaping.egress_rate, shaping.egress_burst, ticks) if shaping.egress else None)


def _step(what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        if netlink_errno(e) is None:
            raise
        raise failed(what, e) from None


def shape(host: Any, index: int, name: str, mtu: int, shaping: Shaping, network: str, container_id: str,
          ifname: str, undo: Any) -> Interface | None:
    """Shape the attachment whose host-side link is `index` (`name`, `mtu`); push an undo on
    `undo` (an ExitStack) for each thing made. Returns the ifb device (for the result) when egress
    is shaped."""
    ingress, egress = plan(shaping)
    if ingress:
        _step(f"add the ingress tbf on {name}", tc.add_tbf, host, index, TBF_HANDLE,
              ingress.rate, ingress.buffer, ingress.limit)
        undo.callback(_quietly, tc.delete_qdisc, host, index, TBF_HANDLE, tc.TC_H_ROOT)
    if not egress:
        return None
    device = names.ifb_name(network, container_id, ifname)
    _step(f"add ifb device {device}", tc.create_ifb, host, device, mtu or 1500)
    msg = lookup(host, device)
    if msg is None:
        raise CNIError(f"failed to add ifb device {device}", "it is gone right after its creation")
    undo.callback(_quietly, host.delete_link, msg["index"])
    _step(f"mark ifb device {device}", host.set_link, msg["index"],
          alias=names.attachment_alias(network, container_id, ifname, names.IFB_MARK))
    _step(f"add the egress tbf on {device}", tc.add_tbf, host, msg["index"], TBF_HANDLE,
          egress.rate, egress.buffer, egress.limit)
    _step(f"add the ingress qdisc on {name}", tc.add_ingress, host, index)
    undo.callback(_quietly, tc.delete_qdisc, host, index, tc.INGRESS_HANDLE, tc.TC_H_INGRESS)
    _step(f"redirect {name} to {device}", tc.add_redirect, host, index, REDIRECT_PRIO, REDIRECT_CLASSID,
          msg["index"])
    return Interface(device, attr(msg, "IFLA_ADDRESS", ""))


def _quietly(fn: Callable, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as e:      # an undo must never hide the error that triggered it
        log.warning(f"shaping rollback step {getattr(fn, '__name__', fn)} failed: {e}")


# ------------------------------------------------------------------ DEL and GC

def _gone(e: BaseException) -> bool:
    return netlink_errno(e) in (errno.ENOENT, errno.ENODEV, errno.EINVAL)


def unshape_link(host: Any, index: int, ifb_index: int | None) -> None:
    """Remove pycni's shaping from link `index` (another plugin's host veth, in a chain): its
    redirect filter (only when it redirects to this attachment's ifb, or the ifb is gone), the
    ingress qdisc when no filter is left on it, and the root tbf that carries pycni's handle."""
    mine = [m for m in tc.filters(host, index) if tc.filter_prio(m) == REDIRECT_PRIO
            and tc.redirect_target(m) is not None]
    if mine and (ifb_index is None or any(tc.redirect_target(m) == ifb_index for m in mine)):
        try:
            tc.delete_filters(host, index, REDIRECT_PRIO)
        except Exception as e:
            if not _gone(e):
                raise failed("remove the redirect filter", e) from None
    qdiscs = tc.qdiscs(host, index)
    if any(q["handle"] == tc.INGRESS_HANDLE and q.get_attr("TCA_KIND") == "ingress" for q in qdiscs) \
            and mine and not tc.filters(host, index):
        try:
            tc.delete_qdisc(host, index, tc.INGRESS_HANDLE, tc.TC_H_INGRESS)
        except Exception as e:
            if not _gone(e):
                raise failed("remove the ingress qdisc", e) from None
    for q in qdiscs:
        if q["handle"] == TBF_HANDLE and q["parent"] == tc.TC_H_ROOT and q.get_attr("TCA_KIND") == "tbf":
            try:
                tc.delete_qdisc(host, index, TBF_HANDLE, tc.TC_H_ROOT)
            except Exception as e:
                if not _gone(e):
                    raise failed("remove the ingress tbf", e) from None


def unshape(host: Any, network: str, container_id: str, ifname: str, host_links: tuple[int, ...] = ()) -> bool:
    """DEL of a chained attachment: remove its shaping from each of `host_links` (indices of
    another plugin's host-side links), then its ifb device. True when an ifb was removed."""
    found = ifb.own_ifb(host, network, container_id, ifname)
    for index in host_links:
        unshape_link(host, index, found["index"] if found is not None else None)
    return ifb.remove(host, network, container_id, ifname)


# ------------------------------------------------------------------ CHECK, inspect, explain

def _root_tbf(host: Any, index: int) -> Tbf | None:
    for q in tc.qdiscs(host, index):
        if q["parent"] == tc.TC_H_ROOT and q["handle"] == TBF_HANDLE:
            parms = tc.tbf_parms(q)
            if parms:
                return Tbf(parms["rate"], parms["buffer"], parms["limit"])
    return None


def _redirect(host: Any, index: int) -> int | None:
    for m in tc.filters(host, index):
        if tc.filter_prio(m) == REDIRECT_PRIO and tc.redirect_target(m) is not None:
            return tc.redirect_target(m)
    return None


def state(host: Any, index: int, network: str, container_id: str, ifname: str) -> dict:
    """What shapes the attachment now: {"ingress": Tbf | None, "egress": Tbf | None, "ifb": name or
    "", "redirect": ifb index the host link's filter sends to, or None}."""
    found = ifb.own_ifb(host, network, container_id, ifname)
    return {"ingress": _root_tbf(host, index),
            "ifb": attr(found, "IFLA_IFNAME", "") if found is not None else "",
            "ifb_index": found["index"] if found is not None else None,
            "egress": _root_tbf(host, found["index"]) if found is not None else None,
            "redirect": _redirect(host, index)}


def check(host: Any, index: int, shaping: Shaping, network: str, container_id: str, ifname: str) -> None:
    """CHECK: the attachment is shaped exactly as `shaping` asks (and not at all when it asks for
    nothing). Raises CNIError naming the first difference."""
    ingress, egress = plan(shaping)
    now = state(host, index, network, container_id, ifname)
    if now["ingress"] != ingress:
        raise CNIError("ingress shaping differs", f"tbf on the host side is {now['ingress']}, expected {ingress}")
    if egress is None:
        if now["ifb"] or now["redirect"] is not None:
            raise CNIError("egress shaping differs", f"ifb {now['ifb'] or '-'} present, none expected")
        return
    if not now["ifb"]:
        raise CNIError("egress shaping differs",
                       f"ifb device {names.ifb_name(network, container_id, ifname)} is missing")
    if now["egress"] != egress:
        raise CNIError("egress shaping differs", f"tbf on {now['ifb']} is {now['egress']}, expected {egress}")
    if now["redirect"] != now["ifb_index"]:
        raise CNIError("egress shaping differs", f"the host side does not redirect to {now['ifb']}")


def describe(now: dict) -> str:
    """One line for people: 'ingress 10 Mbit/s (tbf 7063:), egress 5 Mbit/s (ifb pbw...)'."""
    parts = []
    if now["ingress"]:
        parts.append(f"ingress {_rate(now['ingress'].rate)} (tbf 7063: on the host side)")
    if now["egress"]:
        parts.append(f"egress {_rate(now['egress'].rate)} (tbf 7063: on {now['ifb']})")
    return ", ".join(parts) or "not shaped"


def _rate(bytes_per_sec: int) -> str:
    bits = bytes_per_sec * 8
    for unit, size in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bits >= size:
            return f"{bits / size:g} {unit}"
    return f"{bits} bit/s"
