"""The CNI result: one model, parsed from any supported version, printed in the requested one.

Rule: pure data and pure functions. `render(result, version)` is the only way a result becomes
JSON; `parse(obj)` accepts 0.3.x, 0.4.0 and 1.x shapes (prevResult, delegated IPAM output).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from cni.record import field, record
from cni.spec.errors import DecodeFailure
from cni.spec.version import at_least

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@record
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None


@record
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def family(self) -> int:
        return self.address.version


@record
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


@record
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@record
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)


# ---------------------------------------------------------------- rendering


def render_dns(dns: DNS) -> dict:
    out: dict[str, Any] = {}
    if dns.nameservers:
        out["nameservers"] = list(dns.nameservers)
    if dns.domain:
        out["domain"] = dns.domain
    if dns.search:
        out["search"] = list(dns.search)
    if dns.options:
        out["options"] = list(dns.options)
    return out


def render(result: Result, version: str) -> dict:
    """The result as the spec version `version` prints it."""
    v11 = at_least(version, "1.1.0")
    v1 = at_least(version, "1.0.0")
    out: dict[str, Any] = {"cniVersion": version}
    if result.interfaces:
        ifaces = []
        for i in result.interfaces:
            d: dict[str, Any] = {"name": i.name}
            if i.mac:
                d["mac"] = i.mac
            if v11 and i.mtu:
                d["mtu"] = i.mtu
            if i.sandbox:
                d["sandbox"] = i.sandbox
            ifaces.append(d)
        out["interfaces"] = ifaces
    if result.ips:
        ips = []
        for ip in result.ips:
            d = {}
            if not v1:
                d["version"] = str(ip.family)
            if ip.interface is not None:
                d["interface"] = ip.interface
            d["address"] = str(ip.address)
            if ip.gateway is not None:
                d["gateway"] = str(ip.gateway)
            ips.append(d)
        out["ips"] = ips
    if result.routes:
        routes = []
        for r in result.routes:
            d = {"dst": str(r.dst)}
            if r.gw is not None:
                d["gw"] = str(r.gw)
            if v11:
                for key in ("mtu", "advmss", "priority", "table", "scope"):
                    value = getattr(r, key)
                    if value is not None:
                        d[key] = value
            routes.append(d)
        out["routes"] = routes
    out["dns"] = render_dns(result.dns)
    return out


# ---------------------------------------------------------------- parsing


def _bad(what: str, value: Any) -> DecodeFailure:
    return DecodeFailure("invalid result", f"{what}: {value!r}")


def parse_ip_interface(text: Any) -> IPInterface:
    if not isinstance(text, str) or "/" not in text:
        raise _bad("address must be CIDR", text)
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise _bad("address", text) from None


def parse_ip(text: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except (ValueError, TypeError):
        raise _bad("ip", text) from None


def parse_network(text: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except (ValueError, TypeError):
        raise _bad("network", text) from None


def _opt_int(d: dict, key: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(key, value)
    return value


def parse_route(d: Any) -> Route:
    if not isinstance(d, dict) or "dst" not in d:
        raise _bad("route", d)
    gw = d.get("gw")
    return Route(
        dst=parse_network(d["dst"]),
        gw=parse_ip(gw) if gw else None,
        mtu=_opt_int(d, "mtu"),
        advmss=_opt_int(d, "advmss"),
        priority=_opt_int(d, "priority"),
        table=_opt_int(d, "table"),
        scope=_opt_int(d, "scope"),
    )


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(what, value)
    return tuple(value)


def parse_dns(d: Any) -> DNS:
    if not d:
        return DNS()
    if not isinstance(d, dict):
        raise _bad("dns", d)
    domain = d.get("domain") or ""
    if not isinstance(domain, str):
        raise _bad("dns.domain", domain)
    return DNS(
        nameservers=_str_list(d.get("nameservers"), "dns.nameservers"),
        domain=domain,
        search=_str_list(d.get("search"), "dns.search"),
        options=_str_list(d.get("options"), "dns.options"),
    )


def parse(obj: Any) -> Result:
    """A result of any version we support (the `version` key of 0.3.x/0.4.0 ips is ignored)."""
    if not isinstance(obj, dict):
        raise _bad("result", obj)
    ifaces = []
    for i in obj.get("interfaces") or []:
        if not isinstance(i, dict) or not isinstance(i.get("name"), str):
            raise _bad("interface", i)
        ifaces.append(
            Interface(name=i["name"], mac=i.get("mac") or "", sandbox=i.get("sandbox") or "",
                      mtu=_opt_int(i, "mtu"))
        )
    ips = []
    for ip in obj.get("ips") or []:
        if not isinstance(ip, dict):
            raise _bad("ip", ip)
        gw = ip.get("gateway")
        ips.append(
            IPConfig(
                address=parse_ip_interface(ip.get("address")),
                gateway=parse_ip(gw) if gw else None,
                interface=_opt_int(ip, "interface"),
            )
        )
    routes = [parse_route(r) for r in obj.get("routes") or []]
    return Result(tuple(ifaces), tuple(ips), tuple(routes), parse_dns(obj.get("dns")))


def parse_prev_result(conf: Mapping) -> Result | None:
    """A chained call's `prevResult` (None when there is none), as CHECK and chained plugins read it."""
    prev = conf.get("prevResult")
    if not prev:
        return None
    try:
        return parse(prev)
    except DecodeFailure as e:
        raise DecodeFailure("invalid prevResult", e.details) from None
