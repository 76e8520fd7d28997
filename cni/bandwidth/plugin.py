"""`pycni-bandwidth`: per-pod traffic shaping as a chained plugin, a drop-in for the reference
`bandwidth` (v1.1.1) after any interface plugin that gives the pod a veth (ours or another's).

The same options and kernel steps as `pycni` with the `bandwidth` capability (cni.bandwidth.options
and .apply); the host side of the pod's interface is found as the reference finds it: the veth
peer of CNI_IFNAME, which must be one of prevResult's host interfaces. ADD appends the ifb device
to prevResult's interfaces (as the reference does) and passes the rest on unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any

from cni.bandwidth import ifb, options
from cni.spec.result import parse_prev_result
from cni.linux import links, netns
from cni.spec import names
from cni.spec.errors import CNIError
from cni.spec.log import log
from cni.spec.request import Request, valid_attachments
from cni.record import replace
from cni.spec.result import Result


def _host_side(req: Request, prev: Result, host: Any) -> Any:
    """The host-side link message of the pod's CNI_IFNAME (its veth peer), as prevResult names it."""
    pod = links.open_rtnl_in(req.netns)
    try:
        msg = links.lookup(pod, req.ifname)
    finally:
        pod.close()
    peer = msg.get_attr("IFLA_LINK") if msg is not None else None
    if not peer or links.link_kind(msg) != "veth":
        raise CNIError(f"container interface {req.ifname} has no veth peer", req.netns)
    found = host.link_by_index(peer)
    if found is None:
        raise CNIError(f"veth peer with index {peer} is not in host ns")
    name = links.attr(found, "IFLA_IFNAME", "")
    if not any(not i.sandbox and i.name == name for i in prev.interfaces):
        raise CNIError("no veth peer of container interface found in host ns", f"{name} is not in prevResult")
    return found


def _required_prev(req: Request) -> Result:
    prev = parse_prev_result(req.config)
    if prev is None:
        raise CNIError("must be called as chained plugin", "prevResult is missing")
    return prev


class BandwidthPlugin:
    def add(self, req: Request) -> Result:
        shaping = options.parse(req.config)
        prev = parse_prev_result(req.config)
        if not shaping.any:
            return prev if prev is not None else Result()
        if prev is None:
            raise CNIError("must be called as chained plugin", "prevResult is missing")
        from cni.bandwidth import apply  # lazy: pyroute2's tc messages only when shaping

        host = links.open_rtnl()
        try:
            veth = _host_side(req, prev, host)
            with contextlib.ExitStack() as undo:
                shaped = apply.shape(host, veth["index"], links.attr(veth, "IFLA_IFNAME", ""),
                                     links.attr(veth, "IFLA_MTU", 1500), shaping, req.config["name"],
                                     req.container_id, req.ifname, undo)
                undo.pop_all()
        finally:
            host.close()
        log.info(f"shaped {req.ifname} {options.describe(shaping)}")
        return replace(prev, interfaces=prev.interfaces + (shaped,)) if shaped else prev

    def delete(self, req: Request) -> None:
        """Whatever the config says now (DEL never refuses a config): remove pycni's redirect filter,
        ingress qdisc and tbf from the host side of the pod's interface, then its ifb device."""
        try:
            prev = parse_prev_result(req.config)
        except CNIError:
            prev = None
        host = links.open_rtnl()
        try:
            sides = _delete_sides(req, prev, host)
            if sides:
                from cni.bandwidth import apply  # lazy: tc messages, only where a host side is left

                apply.unshape(host, req.config["name"], req.container_id, req.ifname, sides)
            else:
                ifb.remove(host, req.config["name"], req.container_id, req.ifname)
        finally:
            host.close()

    def check(self, req: Request) -> None:
        shaping = options.parse(req.config)
        prev = parse_prev_result(req.config)
        if prev is None:
            raise CNIError("must be called as a chained plugin", "prevResult is missing")
        from cni.bandwidth import apply  # lazy: tc messages, CHECK only

        host = links.open_rtnl()
        try:
            veth = _host_side(req, prev, host)
            apply.check(host, veth["index"], shaping, req.config["name"], req.container_id, req.ifname)
        finally:
            host.close()

    def status(self, req: Request) -> None:
        options.parse(req.config)

    def gc(self, req: Request) -> None:
        network = req.config["name"]
        keep = {names.attachment_hash(network, cid, ifname) for cid, ifname in valid_attachments(req.config)}
        host = links.open_rtnl()
        try:
            ifb.gc(host, network, keep)
        finally:
            host.close()


def _delete_sides(req: Request, prev: Result | None, host: Any) -> tuple[int, ...]:
    """The host-side links DEL cleans: the veth peer of CNI_IFNAME when the pod's namespace is
    still there, else the veths among prevResult's host interfaces. Empty when none is left."""
    if req.netns and netns.exists(req.netns) and prev is not None:
        try:
            return (_host_side(req, prev, host)["index"],)
        except CNIError:
            pass
    out = []
    for iface in (prev.interfaces if prev is not None else ()):
        if not iface.sandbox:
            msg = links.lookup(host, iface.name)
            if msg is not None and links.link_kind(msg) == "veth":
                out.append(msg["index"])
    return tuple(out)
