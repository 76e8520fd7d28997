"""IPAM for the bridge plugin: `pycni-ipam` in process, any other type executed from CNI_PATH.

Rule: callers see one interface whichever way the IPAM runs; errors keep their CNI codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from cni.spec import result
from cni.spec.errors import CNIError, DecodeFailure
from cni.spec.log import log
from cni.spec.request import Request
from cni.spec.result import IPAddress, Result

if TYPE_CHECKING:     # the bridge plugin's config; ipam/ does not import the plugin
    from cni.bridge.config import NetConf


def _ipam_config(conf: NetConf, req: Request):
    from ipam import config as ipam_config  # lazy: per call, only the IPAM path this config takes

    return ipam_config.parse(conf.ipam, conf.name, conf.runtime_config, conf.args, req.args)


def _run(conf: NetConf, req: Request, command: str) -> dict | None:
    from ipam.delegate import exec_plugin  # lazy: subprocess only when the IPAM is another program

    return exec_plugin(conf.ipam_type, command, req.env, req.path, req.raw_config)


def add(conf: NetConf, req: Request) -> Result:
    if conf.ipam_in_process:
        from ipam import service  # lazy: per call, only the IPAM path this config takes

        return service.add(_ipam_config(conf, req), req.container_id, req.ifname)
    out = _run(conf, req, "ADD")
    try:
        return result.parse(out or {})
    except DecodeFailure as e:
        raise CNIError(f"IPAM plugin {conf.ipam_type} returned an invalid result", e.details) from None


def delete(conf: NetConf, req: Request) -> None:
    if conf.ipam_in_process:
        # lazy: per call, only the IPAM path this config takes
        from ipam import config as ipam_config
        from ipam import service

        # DEL needs only where the reservations are: nothing else of the IPAM section is read, so
        # nothing else in it can stop a release
        service.delete(ipam_config.locate(conf.ipam, conf.name), req.container_id, req.ifname)
        return
    from ipam.delegate import PluginNotFound  # lazy: per call, only the IPAM path this config takes

    try:
        _run(conf, req, "DEL")
    except PluginNotFound as e:     # nothing to run: ADD could not have run it either

        log.warning(f"DEL: IPAM not released: {e.msg} ({e.details})")


def rollback(conf: NetConf, req: Request, added: Result) -> None:
    """Undo this ADD's IPAM step: in process, exactly the addresses it reserved; a delegated IPAM
    can only be asked to DEL the attachment."""
    if conf.ipam_in_process:
        from ipam import service  # lazy: per call, only the IPAM path this config takes

        service.rollback(_ipam_config(conf, req), req.container_id, req.ifname,
                         [ip.address.ip for ip in added.ips])
    else:
        _run(conf, req, "DEL")


def check(conf: NetConf, req: Request, expected: Iterable[IPAddress]) -> None:
    if conf.ipam_in_process:
        from ipam import service  # lazy: per call, only the IPAM path this config takes

        service.check(_ipam_config(conf, req), req.container_id, req.ifname, expected)
    else:
        _run(conf, req, "CHECK")


def status(conf: NetConf, req: Request) -> None:
    if conf.ipam_in_process:
        from ipam import service  # lazy: per call, only the IPAM path this config takes

        service.status(_ipam_config(conf, req))
    else:
        _run(conf, req, "STATUS")


def gc(conf: NetConf, req: Request, valid: list[tuple[str, str]]) -> None:
    if conf.ipam_in_process:
        from ipam import service  # lazy: per call, only the IPAM path this config takes

        service.gc(_ipam_config(conf, req), valid)
    else:
        _run(conf, req, "GC")
