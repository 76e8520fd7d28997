"""`pycni-portmap`: port mapping as a chained plugin, a drop-in for the reference `portmap`.

It runs after any interface plugin (ours or the reference `bridge`) and reads the container's
addresses from `prevResult`; it passes `prevResult` on unchanged.
"""

from __future__ import annotations


from cni.firewall import rules as firewall
from cni.spec.result import parse_prev_result
from cni.spec.errors import CNIError, InvalidConfig
from cni.firewall.options import MAX_PORT_MAPPINGS, parse_mappings, parse_options
from cni.spec.result import Result
from cni.spec.request import Request, valid_attachments


def _pod_ips(prev: Result, req: Request) -> tuple:
    """The addresses on the sandbox interface CNI_IFNAME (all of them if indices are missing)."""
    mine = {i for i, iface in enumerate(prev.interfaces) if iface.name == req.ifname and iface.sandbox}
    return tuple(ip.address for ip in prev.ips if ip.interface is None or ip.interface in mine)


def _spec(req: Request, prev: Result | None, deleting: bool = False) -> firewall.FirewallSpec:
    rc = req.config.get("runtimeConfig") or {}
    if not isinstance(rc, dict):
        raise InvalidConfig("invalid runtimeConfig", "must be an object")
    return firewall.FirewallSpec(
        network=req.config["name"], container_id=req.container_id, ifname=req.ifname,
        pod_ips=_pod_ips(prev, req) if prev else (),
        mappings=parse_mappings(rc.get("portMappings"), None if req.command == "DEL" else MAX_PORT_MAPPINGS),
        masquerade=False, options=parse_options(req.config), exhaustive=not deleting, reference=deleting)


def _required_prev(req: Request, why: str) -> Result:
    prev = parse_prev_result(req.config)
    if prev is None:
        raise InvalidConfig(why, "prevResult is missing")
    return prev


class PortmapPlugin:
    def add(self, req: Request) -> Result:
        prev = _required_prev(req, "must be called as a chained plugin")
        spec = _spec(req, prev)
        if spec.mappings and spec.pod_ips:
            firewall.setup(spec)
            if spec.options.snat and spec.ips(4):
                for iface in prev.interfaces:
                    if not iface.sandbox:
                        try:
                            firewall.enable_route_localnet(iface.name)
                        except OSError:
                            pass
        return prev

    def delete(self, req: Request) -> None:
        # whatever mappings DEL is given (none, or not ADD's): the elements are found by their tag,
        # and what the reference portmap made for the pod goes too (a node switched from it)
        spec = _spec(req, parse_prev_result(req.config), deleting=True)
        firewall.teardown(spec)

    def check(self, req: Request) -> None:
        prev = _required_prev(req, "Required prevResult missing")
        spec = _spec(req, prev)
        if spec.mappings and spec.pod_ips:
            try:
                firewall.check(spec)
            except CNIError as ours:
                # a pod the reference portmap made (a node switched from it): its DNAT chain
                from cni.firewall import reference  # lazy: CHECK of a pod without pycni's rules only

                try:
                    reference.check(spec.network, spec.container_id, masquerade=False, mappings=True)
                except CNIError:
                    raise ours from None

    def status(self, req: Request) -> None:
        from cni.firewall import hostcheck  # lazy: STATUS only

        hostcheck.require(hostcheck.firewall_problems(parse_options(req.config).backend))

    def gc(self, req: Request) -> None:
        firewall.gc(req.config["name"], valid_attachments(req.config))
