"""`loopback` (installed as `pycni-loopback`, and as `loopback` where none exists): brings the pod's
loopback interface up. containerd's CRI (before use_internal_loopback) runs a plugin of type
`loopback` for every pod sandbox; a node with only pycni in its bin dir would otherwise fail every
pod with "failed to find plugin loopback".

ADD sets the link up and reports it with its addresses (127.0.0.1/8, ::1/128); DEL sets it down
and succeeds when the namespace is already gone; CHECK verifies it is up.
"""

from __future__ import annotations

from cni.linux import links
from cni.linux import netns
from cni.spec.errors import CNIError, InvalidEnvironment
from cni.spec.result import Interface, IPConfig, Result
from cni.spec.request import Request

IFF_UP, IFF_LOOPBACK = 0x1, 0x8


def _loopback(ipr, req: Request):
    link = links.lookup(ipr, req.ifname)
    if link is None:
        raise CNIError(f"no link {req.ifname} in the pod namespace", req.netns)
    if not link["flags"] & IFF_LOOPBACK:
        raise InvalidEnvironment(f"{req.ifname} is not a loopback interface",
                                 "CNI_IFNAME must name the pod's loopback (lo)")
    return link


class LoopbackPlugin:
    def add(self, req: Request) -> Result:
        ipr = links.open_rtnl_in(req.netns)
        try:
            link = _loopback(ipr, req)
            try:
                ipr.set_link(link["index"], up=True)
            except Exception as e:
                raise links.failed(f"set {req.ifname} up", e) from None
            addresses = links.addresses_of(ipr, link["index"])
        finally:
            ipr.close()
        return Result(interfaces=(Interface(req.ifname, "00:00:00:00:00:00", req.netns),),
                      ips=tuple(IPConfig(a, interface=0) for a in addresses))

    def delete(self, req: Request) -> None:
        if not netns.exists(req.netns):
            return
        ipr = links.open_rtnl_in(req.netns)
        try:
            link = links.lookup(ipr, req.ifname)
            if link is not None and link["flags"] & IFF_LOOPBACK:
                ipr.set_link(link["index"], up=False)
        except Exception as e:
            raise links.failed(f"set {req.ifname} down", e) from None
        finally:
            ipr.close()

    def check(self, req: Request) -> None:
        ipr = links.open_rtnl_in(req.netns)
        try:
            if not _loopback(ipr, req)["flags"] & IFF_UP:
                raise CNIError(f"{req.ifname} is down", req.netns)
        finally:
            ipr.close()

    def status(self, req: Request) -> None:
        return None

    def gc(self, req: Request) -> None:
        return None
