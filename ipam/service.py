"""IPAM verbs over the disk store: what `pycni` runs in process and `pycni-ipam` runs as a plugin.

Rule: each verb takes the store lock once, for as short as possible.
"""

from __future__ import annotations

from typing import Iterable

from cni.spec.errors import CNIError, NotAvailable
from cni.spec.result import IPAddress, Result

from ipam import allocator
from ipam.config import IPAMConfig
from ipam.store import DiskStore, Store


def open_store(conf: IPAMConfig) -> DiskStore:
    return DiskStore(conf.network_dir, conf.lock_timeout)


def add(conf: IPAMConfig, container_id: str, ifname: str, store: Store | None = None) -> Result:
    store = store or open_store(conf)
    with store.lock():
        ips = allocator.allocate(conf, store, container_id, ifname)
    return Result(ips=tuple(ips), routes=conf.routes, dns=conf.dns)


def delete(conf: IPAMConfig, container_id: str, ifname: str, store: Store | None = None) -> list[IPAddress]:
    """Release the attachment's addresses. Creates nothing: no data dir (or a dangling one) means
    nothing to release, and a lock file that cannot be made means no writer ever reserved here."""
    store = store or open_store(conf)
    if not store.present():
        return []
    with store.lock(create=False):
        return allocator.release(store, container_id, ifname)


def rollback(conf: IPAMConfig, container_id: str, ifname: str, ips: Iterable[IPAddress],
             store: Store | None = None) -> list[IPAddress]:
    """Undo one ADD: release the addresses it returned, if the attachment still holds them."""
    store = store or open_store(conf)
    with store.lock():
        return allocator.release_exactly(store, container_id, ifname, ips)


def check(conf: IPAMConfig, container_id: str, ifname: str, expected: Iterable[IPAddress] = (),
          store: Store | None = None) -> None:
    store = store or open_store(conf)
    with store.lock():
        held = set(allocator.find(store, container_id, ifname))
    if not held:
        raise CNIError("IPAM reservation missing",
                       f"no address of network {conf.network} is held by {container_id}/{ifname}")
    missing = [str(ip) for ip in expected if ip not in held]
    if missing:
        raise CNIError("IPAM reservation missing",
                       f"{', '.join(missing)} not held by {container_id}/{ifname}")


def status(conf: IPAMConfig, store: DiskStore | None = None) -> None:
    store = store or open_store(conf)
    why = store.writable()
    if why:
        raise NotAvailable("IPAM data directory is not usable", why)
    with store.lock():
        full = allocator.exhausted_sets(conf, store)
    if full:
        raise NotAvailable(
            "no IP addresses available",
            "exhausted: " + "; ".join(", ".join(r.describe() for r in rs) for rs in full),
        )


def gc(conf: IPAMConfig, valid: Iterable[tuple[str, str]], store: Store | None = None) -> list[IPAddress]:
    store = store or open_store(conf)
    with store.lock():
        return allocator.collect_garbage(store, valid)
