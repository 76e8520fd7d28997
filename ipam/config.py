"""IPAM configuration, parsed once into frozen records (host-local's option names).

Rule: everything downstream trusts an `IPAMConfig`; every check on user input happens here.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Iterable

from cni.record import record
from cni.spec.errors import InvalidConfig, InvalidEnvironment
from cni.spec.fields import go_keys
from cni.spec.result import DNS, IPAddress, IPNetwork, Route, parse_route
from cni.spec.errors import DecodeFailure

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_LOCK_TIMEOUT = 60.0


@record
class Range:
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress | None

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, type(self.start)) and self.start <= ip <= self.end

    def excluded(self, ip: IPAddress) -> bool:
        """Addresses never handed out: network, broadcast (v4) and gateway."""
        if ip == self.subnet.network_address or ip == self.gateway:
            return True
        return ip.version == 4 and ip == self.subnet.broadcast_address

    def size(self) -> int:
        n = int(self.end) - int(self.start) + 1
        return n - sum(1 for ip in {self.subnet.network_address, self.gateway,
                                    self.subnet.broadcast_address if self.subnet.version == 4 else None}
                       if ip is not None and ip in self)

    def describe(self) -> str:
        return f"{self.start}-{self.end}"


RangeSet = tuple[Range, ...]


@record
class IPAMConfig:
    type: str
    network: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...] = ()
    data_dir: str = DEFAULT_DATA_DIR
    dns: DNS = DNS()
    requested: tuple[IPAddress, ...] = ()
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT

    @property
    def network_dir(self) -> str:
        return os.path.join(self.data_dir, self.network)

    def set_index_of(self, ip: IPAddress) -> int | None:
        for i, rs in enumerate(self.range_sets):
            if any(ip in r for r in rs):
                return i
        return None


def _err(msg: str, details: str = "") -> InvalidConfig:
    return InvalidConfig(msg, details)


def _ip(value: Any, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise _err(f"invalid {what}", repr(value)) from None


def parse_range(d: Any) -> Range:
    if not isinstance(d, dict):
        raise _err("invalid range", repr(d))
    d = go_keys(d, ("subnet", "rangeStart", "rangeEnd", "gateway"))   # ipRanges from Go runtimes
    raw = d.get("subnet")
    if not isinstance(raw, str) or not raw:
        raise _err("invalid range", "a range needs a \"subnet\"")
    try:
        iface = ipaddress.ip_interface(raw)
    except ValueError:
        raise _err("invalid subnet", repr(raw)) from None
    subnet = iface.network
    if iface.ip != subnet.network_address:
        raise _err("invalid subnet", f"network {raw} has host bits set")
    if subnet.prefixlen >= subnet.max_prefixlen - 1:
        raise _err("invalid subnet", f"network {raw} too small to allocate from")
    gateway = _ip(d["gateway"], "gateway") if d.get("gateway") else subnet.network_address + 1
    if gateway.version != subnet.version:
        raise _err("invalid gateway", f"{gateway} is not the family of {subnet}")
    start = _ip(d["rangeStart"], "rangeStart") if d.get("rangeStart") else subnet.network_address + 1
    if d.get("rangeEnd"):
        end = _ip(d["rangeEnd"], "rangeEnd")
    elif subnet.version == 4:
        end = subnet.broadcast_address - 1
    else:
        end = subnet.broadcast_address
    for name, ip in (("rangeStart", start), ("rangeEnd", end)):
        if ip not in subnet:
            raise _err(f"invalid {name}", f"{ip} is not in {subnet}")
    if start > end:
        raise _err("invalid range", f"rangeStart {start} is after rangeEnd {end}")
    return Range(subnet, start, end, gateway)


def _overlaps(a: Range, b: Range) -> bool:
    return a.start.version == b.start.version and a.start <= b.end and b.start <= a.end


def parse_range_sets(sets: Any) -> list[RangeSet]:
    if not isinstance(sets, list):
        raise _err("invalid ranges", "\"ranges\" must be a list of lists of ranges")
    out = []
    for rs in sets:
        if not isinstance(rs, list) or not rs:
            raise _err("invalid ranges", "each range set must be a non-empty list")
        ranges = tuple(parse_range(r) for r in rs)
        if len({r.subnet.version for r in ranges}) != 1:
            raise _err("invalid ranges", "a range set mixes IPv4 and IPv6")
        out.append(ranges)
    return out


def _check_overlaps(sets: list[RangeSet]) -> None:
    flat = [(i, r) for i, rs in enumerate(sets) for r in rs]
    for n, (i, a) in enumerate(flat):
        for j, b in flat[n + 1:]:
            if _overlaps(a, b):
                where = "within a range set" if i == j else "between range sets"
                raise _err("invalid ranges", f"{a.describe()} overlaps {b.describe()} {where}")


def _parse_requested(values: Iterable[Any], source: str) -> list[IPAddress]:
    out = []
    for v in values:
        if not isinstance(v, str):
            raise InvalidConfig(f"invalid IP in {source}", repr(v))
        try:
            out.append(ipaddress.ip_interface(v.strip()).ip)
        except ValueError:
            err = InvalidEnvironment if source == "CNI_ARGS IP" else InvalidConfig
            raise err(f"invalid IP in {source}", repr(v)) from None
    return out


def requested_ips(runtime_config: dict, args: dict, cni_args: dict) -> list[IPAddress]:
    """runtimeConfig.ips, else args.cni.ips, else CNI_ARGS IP= (comma separated)."""
    rc = runtime_config.get("ips")
    if rc:
        if not isinstance(rc, list):
            raise InvalidConfig("invalid runtimeConfig.ips", repr(rc))
        return _parse_requested(rc, "runtimeConfig.ips")
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and cni.get("ips"):
        if not isinstance(cni["ips"], list):
            raise InvalidConfig("invalid args.cni.ips", repr(cni["ips"]))
        return _parse_requested(cni["ips"], "args.cni.ips")
    if cni_args.get("IP"):
        return _parse_requested(cni_args["IP"].split(","), "CNI_ARGS IP")
    return []


def parse_resolv_conf(path: str) -> DNS:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except (OSError, ValueError) as e:      # ValueError: a NUL byte in the path
        raise _err("cannot read resolvConf", f"{path!r}: {getattr(e, 'strerror', None) or e}") from None
    ns, search, opts, domain = [], [], [], ""
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        key, rest = fields[0], fields[1:]
        if key == "nameserver":
            ns.append(rest[0])
        elif key == "domain":
            domain = rest[0]
        elif key == "search":
            search.extend(rest)
        elif key == "options":
            opts.extend(rest)
    return DNS(tuple(ns), domain, tuple(search), tuple(opts))


def parse(ipam: Any, network: str, runtime_config: dict | None = None, args: dict | None = None,
          cni_args: dict | None = None) -> IPAMConfig:
    if not isinstance(ipam, dict):
        raise _err("invalid ipam", "\"ipam\" must be an object")
    runtime_config = runtime_config or {}
    sets: list[RangeSet] = []
    extra = runtime_config.get("ipRanges")
    if extra:
        sets.extend(parse_range_sets(extra))
    if ipam.get("subnet"):
        sets.append((parse_range({k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}),))
    if ipam.get("ranges") is not None:
        sets.extend(parse_range_sets(ipam["ranges"]))
    if not sets:
        raise _err("invalid ipam", "no IP ranges specified (\"ranges\" or \"subnet\")")
    _check_overlaps(sets)

    raw_routes = ipam.get("routes")
    if raw_routes is not None and not isinstance(raw_routes, list):
        raise _err("invalid ipam routes", f"\"routes\" must be a list, not {raw_routes!r:.80}")
    try:
        routes = tuple(parse_route(r) for r in raw_routes or [])
    except DecodeFailure as e:
        raise _err("invalid ipam routes", e.details) from None

    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or not os.path.isabs(data_dir) or "\0" in data_dir:
        raise _err("invalid dataDir", f"{data_dir!r} must be an absolute path")
    data_dir = os.path.normpath(data_dir)

    dns = DNS()
    if ipam.get("resolvConf"):
        if not isinstance(ipam["resolvConf"], str):
            raise _err("invalid resolvConf", repr(ipam["resolvConf"]))
        dns = parse_resolv_conf(ipam["resolvConf"])

    timeout = ipam.get("lockTimeout", DEFAULT_LOCK_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise _err("invalid lockTimeout", repr(timeout))

    conf = IPAMConfig(
        type=str(ipam.get("type") or ""),
        network=network,
        range_sets=tuple(sets),
        routes=routes,
        data_dir=data_dir,
        dns=dns,
        requested=tuple(requested_ips(runtime_config, args or {}, cni_args or {})),
        lock_timeout=float(timeout),
    )
    for ip in conf.requested:
        if conf.set_index_of(ip) is None:
            raise _err("requested IP not in any range", str(ip))
    return conf


def locate(ipam: Any, network: str) -> IPAMConfig:
    """Only where the network's reservations live: what DEL needs when the rest of the IPAM section
    no longer parses (DEL must still release). Falls back to the defaults for what is unusable."""
    ipam = ipam if isinstance(ipam, dict) else {}
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or not os.path.isabs(data_dir) or "\0" in data_dir:
        data_dir = DEFAULT_DATA_DIR
    timeout = ipam.get("lockTimeout", DEFAULT_LOCK_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        timeout = DEFAULT_LOCK_TIMEOUT
    return IPAMConfig(type=str(ipam.get("type") or ""), network=network, range_sets=(),
                      data_dir=os.path.normpath(data_dir), lock_timeout=float(timeout))
