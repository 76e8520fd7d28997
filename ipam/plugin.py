"""`pycni-ipam`: the IPAM alone, as a standalone CNI IPAM plugin any main plugin can delegate to.

Its result has no interfaces, and its ips carry no interface index (the spec's IPAM result).
"""

from __future__ import annotations

from cni.spec.errors import InvalidConfig
from cni.spec.result import Result, parse as parse_result
from cni.spec.request import Request, valid_attachments

from ipam import config, service


def _conf(req: Request) -> config.IPAMConfig:
    ipam = req.config.get("ipam")
    if not isinstance(ipam, dict):
        raise InvalidConfig("invalid ipam", "the config has no \"ipam\" object")
    rc = req.config.get("runtimeConfig") or {}
    args = req.config.get("args") or {}
    if not isinstance(rc, dict) or not isinstance(args, dict):
        raise InvalidConfig("invalid config", "runtimeConfig and args must be objects")
    return config.parse(ipam, req.config["name"], rc, args, req.args)


class IPAMPlugin:
    def add(self, req: Request) -> Result:
        return service.add(_conf(req), req.container_id, req.ifname)

    def delete(self, req: Request) -> None:
        # only where the reservations are: a section ADD would refuse can still be released
        service.delete(config.locate(req.config.get("ipam"), str(req.config.get("name"))),
                       req.container_id, req.ifname)

    def check(self, req: Request) -> None:
        prev = req.config.get("prevResult")
        expected = [ip.address.ip for ip in parse_result(prev).ips] if prev else []
        service.check(_conf(req), req.container_id, req.ifname, expected)

    def status(self, req: Request) -> None:
        service.status(_conf(req))

    def gc(self, req: Request) -> None:
        service.gc(_conf(req), valid_attachments(req.config))
