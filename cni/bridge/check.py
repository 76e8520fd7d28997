"""CHECK for the bridge plugin: compare what the kernel shows with the ADD result (prevResult).

Rule: each mismatch is its own clear error naming the thing and both values.
"""

from __future__ import annotations

from cni.bridge import apply
from cni.linux import links
from cni.spec import names
from cni.bridge.config import NetConf
from cni.spec.errors import CNIError
from cni.spec.result import Result
from cni.spec.request import Request


def _fail(what: str, details: str) -> CNIError:
    return CNIError(f"CHECK failed: {what}", details)


def check_attachment(conf: NetConf, req: Request, prev: Result) -> bool:
    """Raises the first mismatch; True when the host veth is pycni's (by its name), False when
    another plugin made the attachment (the reference: the host end found as the pod's peer)."""
    mine = [i for i, iface in enumerate(prev.interfaces)
            if iface.name == req.ifname and iface.sandbox == req.netns]
    if not mine:
        raise _fail("interface not in prevResult", f"{req.ifname} in {req.netns}")
    ctr_iface = prev.interfaces[mine[0]]

    state = apply.container_state(req.netns, req.ifname)
    if state is None:
        raise _fail("container interface missing", f"{req.ifname} not found in {req.netns}")
    link, addrs, routes = state
    mac = links.attr(link, "IFLA_ADDRESS", "")
    if ctr_iface.mac and mac.lower() != ctr_iface.mac.lower():
        raise _fail("container MAC differs", f"{req.ifname} has {mac}, prevResult says {ctr_iface.mac}")
    for ip in prev.ips:
        if ip.interface is not None and ip.interface != mine[0]:
            continue
        if ip.address not in addrs:
            raise _fail("container address missing",
                        f"{ip.address} not on {req.ifname} (has {', '.join(map(str, addrs)) or 'none'})")
    for r in prev.routes:
        if not apply.route_present(routes, link["index"], r):
            raise _fail("container route missing", f"{r.dst} via {r.gw or 'link'} in {req.netns}")

    host = links.open_rtnl()
    try:
        bridge = links.lookup(host, conf.bridge)
        if bridge is None or links.link_kind(bridge) != "bridge":
            raise _fail("bridge missing", f"{conf.bridge} is not a bridge on the host")
        veth_name = names.host_veth_name(conf.name, req.container_id, req.ifname)
        veth = links.lookup(host, veth_name)
        ours = veth is not None
        if veth is None:    # made by another plugin (the reference): the pod interface's peer
            peer = link.get_attr("IFLA_LINK") or 0
            veth = apply.host_end(host, apply.PodEnd(link["index"], peer, ()), conf.bridge)
            if veth is None:
                raise _fail("host veth missing", f"{veth_name}, and {req.ifname}'s peer (link {peer}) "
                            f"is no veth port of {conf.bridge} paired with it")
            veth_name = links.attr(veth, "IFLA_IFNAME", "")
        if veth.get_attr("IFLA_MASTER") != bridge["index"]:
            raise _fail("host veth not on the bridge", f"{veth_name} is not a port of {conf.bridge}")
        peer = link.get_attr("IFLA_LINK")
        if peer is not None and peer != veth["index"]:
            raise _fail("veth peer differs", f"{req.ifname} is paired with link {peer}, not {veth_name}")
    finally:
        host.close()
    return ours
