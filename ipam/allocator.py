"""Pure allocation decisions over a `Store`: which address, from which range set, for whom.

Rule: every function here runs under the store's lock, taken by the caller (`ipam.service`).
One address per range set; round-robin after the set's last reserved address; never the
network, broadcast or gateway address; requested addresses exactly or an error.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Iterator

from cni.spec.errors import CNIError, InvalidConfig
from cni.spec.result import IPConfig

from ipam.config import IPAddress, IPAMConfig, Range, RangeSet
from ipam.store import Store, holds

# plugin-specific code (>= 100): the range set has no free address
CODE_EXHAUSTED = 100


class AddressesExhausted(CNIError):
    code = CODE_EXHAUSTED


def _candidates(rs: RangeSet, after: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
    """Every address of the set once, starting just after `after` (if it lies in the set)."""
    start_range, start_ip = 0, None
    if after is not None:
        for i, r in enumerate(rs):
            if after in r:
                start_range, start_ip = i, after
                break
    n = len(rs)
    for step in range(n + 1):
        r = rs[(start_range + step) % n]
        lo, hi = int(r.start), int(r.end)
        if step == 0 and start_ip is not None:
            first, last = int(start_ip) + 1, hi
        elif step == n:
            if start_ip is None:
                return
            first, last = lo, int(start_ip)  # wrap around to the cursor itself
        else:
            first, last = lo, hi
        make = ipaddress.IPv4Address if r.start.version == 4 else ipaddress.IPv6Address
        for value in range(first, last + 1):
            yield r, make(value)


def _allocate_one(store: Store, rs: RangeSet, index: int, container_id: str, ifname: str) -> IPAddress:
    for r, ip in _candidates(rs, store.last_reserved(index)):
        if r.excluded(ip):
            continue
        if store.reserve(ip, container_id, ifname, index):
            return ip
    raise AddressesExhausted(
        "no IP addresses available in range set", ", ".join(r.describe() for r in rs)
    )


def _range_of(rs: RangeSet, ip: IPAddress) -> Range:
    return next(r for r in rs if ip in r)


def find(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    """Every address the attachment holds (host-local's id-only reservations of the id included)."""
    return store.held_by(container_id, ifname)


def allocate(conf: IPAMConfig, store: Store, container_id: str, ifname: str) -> list[IPConfig]:
    """One address per range set, for (container_id, ifname). All or nothing."""
    held = store.held_by(container_id, ifname, exhaustive=False)
    if held:
        raise CNIError(
            "duplicate allocation",
            f"{', '.join(map(str, held))} already allocated to {container_id}/{ifname}; "
            "DEL the attachment before adding it again",
        )
    requested = {conf.set_index_of(ip): ip for ip in conf.requested}
    got: list[IPConfig] = []
    try:
        for index, rs in enumerate(conf.range_sets):
            want = requested.get(index)
            if want is not None:
                r = _range_of(rs, want)
                if r.excluded(want):
                    raise InvalidConfig("requested IP cannot be allocated",
                                        f"{want} is the network, broadcast or gateway address")
                if not store.reserve(want, container_id, ifname, index):
                    raise CNIError("requested IP is not available",
                                   f"{want} is already allocated in network {conf.network}")
                ip = want
            else:
                ip = _allocate_one(store, rs, index, container_id, ifname)
            r = _range_of(rs, ip)
            got.append(IPConfig(ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"), r.gateway))
    except BaseException:
        for c in got:
            store.release(c.address.ip)
        raise
    return got


def release(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    ips = find(store, container_id, ifname)      # every file: host-local's reservations too
    for ip in ips:
        store.release(ip)
    store.forget(container_id, ifname)
    return ips


def release_exactly(store: Store, container_id: str, ifname: str, ips: Iterable[IPAddress]) -> list[IPAddress]:
    """Release those of `ips` that the attachment still holds: an ADD's rollback gives back what it
    reserved and nothing else (never an address of an earlier ADD of the same attachment)."""
    held = set(find(store, container_id, ifname))
    gone = [ip for ip in ips if ip in held]
    for ip in gone:
        store.release(ip)
    return gone


def collect_garbage(store: Store, valid: Iterable[tuple[str, str]]) -> list[IPAddress]:
    """Release every reservation whose attachment is not in `valid`."""
    by_id: dict[str, set[str]] = {}
    for cid, ifname in valid:
        by_id.setdefault(cid, set()).add(ifname)
    gone = []
    for ip, holder in store.holders().items():
        if not any(holds(holder, holder[0], ifname) for ifname in by_id.get(holder[0], ())):
            store.release(ip)
            gone.append(ip)
    store.prune()
    return gone


def exhausted_sets(conf: IPAMConfig, store: Store) -> list[RangeSet]:
    holders = store.holders()
    out = []
    for rs in conf.range_sets:
        capacity = sum(r.size() for r in rs)
        used = sum(1 for ip in holders if any(ip in r and not r.excluded(ip) for r in rs))
        if used >= capacity:
            out.append(rs)
    return out
