"""The kernel side of cni/agent/tunnel.py: gathers its `Facts` (the route to every peer address,
the MTU of the interfaces they leave by) and applies an `Overlay`: the VXLAN device, its FDB and
neighbour entries. Only what differs is written, so a restarted agent changes nothing that is
already right (no flap of a peer's entries). Routes are cni/agent/host.py's (one sync for direct
and tunnel routes). The peers' modes go to a JSON file `pycni inspect` reads."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
from typing import Any, Callable, Iterable

from cni.spec.log import log
from cni.linux import vxlan
from cni.linux import links
from cni.linux.links import addresses_of, attr, family
from cni.linux.rtnl import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, RT_TABLE_MAIN, NetlinkError
from cni.agent import kube
from cni.agent.tunnel import ANNOTATION_MAC, Device, Facts, Overlay, Reach, TunnelOptions, underlay_addresses

DEFAULT_PEERS_FILE = "/run/pycni/peers.json"
PROBE_DEVICE = "pycni.probe"


class TunnelError(Exception):
    """The tunnel cannot be set up on this node; the message says why and what to do."""


# ------------------------------------------------------------------ at start

def require_kernel(ipr, opts: TunnelOptions, kind: str = "vxlan") -> None:
    """Fail before anything is configured when the mode needs a link kind this kernel lacks:
    a throwaway device of that kind is created and deleted."""
    if opts.mode == "direct":
        return
    links = ipr.links()
    for msg in links:
        other = vxlan.vxlan_of(msg)
        name = attr(msg, "IFLA_IFNAME", "")
        if other is not None and name != opts.device and other.vni == opts.vni and other.port == opts.port:
            raise TunnelError(f"VXLAN device {name} already uses VNI {opts.vni} on UDP port {opts.port}: "
                              "pick another --vxlan-vni or --vxlan-port")
    if kind != "vxlan" or not any(vxlan.vxlan_of(m) is not None for m in links):
        _probe(ipr, opts, kind)     # (a node with VXLAN devices already has them in its kernel)


def _probe(ipr, opts: TunnelOptions, kind: str) -> None:
    """Create a throwaway device of `kind` and delete it."""
    stale = ipr.link_by_name(PROBE_DEVICE)
    if stale is not None:
        ipr.delete_link(stale["index"])
    try:
        if kind == "vxlan":
            vxlan.create_vxlan(ipr, PROBE_DEVICE, vxlan.Vxlan(opts.vni, opts.port, "127.0.0.1"))
        else:
            ipr._request(vxlan.ifinfmsg, vxlan.RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                         {"family": 0, "index": 0, "flags": 0, "change": 0},
                         [("IFLA_IFNAME", PROBE_DEVICE), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]})])
    except NetlinkError as e:
        if e.code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise TunnelError(f"mode {opts.mode} needs {kind} devices and this kernel has none "
                              f"({os.strerror(e.code)}): use --mode direct, or a kernel with {kind}") from None
        raise TunnelError(f"mode {opts.mode}: cannot create a {kind} device: {e}") from None
    probe = ipr.link_by_name(PROBE_DEVICE)
    if probe is not None:
        ipr.delete_link(probe["index"])


# ------------------------------------------------------------------ facts

def probe(ipr, me: str, nodes: Iterable, opts: TunnelOptions) -> Facts:
    nodes = list(nodes)
    links: dict[int, Any] = {}

    def link(index: int):
        if index not in links:
            links[index] = ipr.link_by_index(index)
        return links[index]

    reach: dict[str, Reach | None] = {}
    for address in sorted(underlay_addresses(me, nodes)):
        r = vxlan.route_get(ipr, address)
        msg = link(r.oif) if r is not None and r.oif else None
        name = attr(msg, "IFLA_IFNAME", "") if msg is not None else ""
        if msg is None or name == opts.device:     # a peer's own address through our tunnel: a loop
            reach[address] = None
            continue
        reach[address] = Reach(name, int(attr(msg, "IFLA_MTU", 1500)), r.gateway)
    default_mtu = None
    for version in (4, 6):
        for route in ipr.routes(family(version)):
            if route["dst_len"] == 0 and route["table"] == RT_TABLE_MAIN and route.get_attr("RTA_OIF"):
                msg = link(route.get_attr("RTA_OIF"))
                if msg is not None:
                    mtu = int(attr(msg, "IFLA_MTU", 1500))
                    default_mtu = min(default_mtu or mtu, mtu)
    own = ipr.link_by_name(opts.device)
    own_mac = attr(own, "IFLA_ADDRESS", "") if own is not None and vxlan.vxlan_of(own) is not None else ""
    return Facts(reach, default_mtu, own_mac)


# ------------------------------------------------------------------ the device and its entries

def ensure_device(ipr, dev: Device) -> tuple[int, int]:
    """The VXLAN device as `dev` says (kept when it already is); returns (its index, writes made)."""
    want = vxlan.Vxlan(dev.vni, dev.port, str(dev.local))
    msg = ipr.link_by_name(dev.name)
    writes = 0
    if msg is not None and (vxlan.vxlan_of(msg) != want or attr(msg, "IFLA_ADDRESS", "") != dev.mac):
        log.info(f"agent: {dev.name} is {vxlan.vxlan_of(msg)}, want {want}: recreated")
        ipr.delete_link(msg["index"])
        msg = None
    if msg is None:
        try:
            vxlan.create_vxlan(ipr, dev.name, want, mtu=dev.mtu, mac=dev.mac)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise TunnelError(f"cannot create {dev.name}: another VXLAN device uses VNI {dev.vni} on UDP "
                                  f"port {dev.port} (pick another --vxlan-vni or --vxlan-port)") from None
            raise TunnelError(f"cannot create {dev.name}: {e}") from None
        log.info(f"agent: created {dev.name} (VNI {dev.vni}, UDP {dev.port}, local {dev.local}, {dev.mac})")
        msg = ipr.link_by_name(dev.name)
        writes += 1
    index = msg["index"]
    if attr(msg, "IFLA_MTU") != dev.mtu:
        vxlan.set_mtu(ipr, index, dev.mtu)
        writes += 1
    if not msg["flags"] & 1:
        try:
            ipr.set_link(index, up=True)
        except NetlinkError as e:
            ipr.delete_link(index)          # not left behind half made
            if e.code == errno.EADDRINUSE:
                raise TunnelError(f"cannot bring {dev.name} up: UDP port {dev.port} is in use on this node "
                                  "(another overlay?): pick another --vxlan-port") from None
            raise TunnelError(f"cannot bring {dev.name} up: {e}") from None
        writes += 1
    have = {ipaddress.ip_network(a) for a in map(str, addresses_of(ipr, index))
            if not ipaddress.ip_interface(a).ip.is_link_local}
    for net in sorted(have - set(dev.addresses), key=str):
        ipr.del_address(index, str(net.network_address), net.prefixlen)
        writes += 1
    for net in sorted(set(dev.addresses) - have, key=str):
        ipr.add_address(index, str(net.network_address), net.prefixlen)
        writes += 1
    return index, writes


def sync_entries(ipr, index: int, overlay: Overlay) -> tuple[int, Callable[[], int]]:
    """FDB and neighbour entries as `overlay` says, in two steps around the routes: now the ones
    to add or change (a route through the tunnel needs them first); returns how many, and the
    second step, which removes the stale ones (called once no route uses them) and says how many."""
    added = 0
    want_fdb = {mac: str(dst) for mac, dst in overlay.fdb.items()}
    have_fdb = vxlan.fdb(ipr, index)
    want_nb = {str(addr): mac for addr, mac in overlay.neighbours.items()}
    have_nb = vxlan.neighbours(ipr, index)
    for mac, dst in sorted(want_fdb.items()):
        if have_fdb.get(mac) != dst:
            vxlan.replace_fdb(ipr, index, mac, dst)
            added += 1
    for addr, mac in sorted(want_nb.items()):
        if have_nb.get(addr) != mac:
            vxlan.replace_neighbour(ipr, index, addr, mac)
            added += 1

    def remove_stale() -> int:
        removed = 0
        for addr in sorted(have_nb.keys() - want_nb.keys()):
            _quietly(vxlan.delete_neighbour, ipr, index, addr)
            removed += 1
        for mac in sorted(have_fdb.keys() - want_fdb.keys()):
            _quietly(vxlan.delete_fdb, ipr, index, mac, have_fdb[mac])
            removed += 1
        return removed

    return added, remove_stale


def remove_device(ipr, name: str) -> bool:
    msg = ipr.link_by_name(name)
    if msg is None or vxlan.vxlan_of(msg) is None:
        return False
    ipr.delete_link(msg["index"])
    log.info(f"agent: {name} removed (mode direct)")
    return True


def _quietly(step, *args) -> None:
    try:
        step(*args)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH):
            raise


# ------------------------------------------------------------------ what inspect reads

def peers_record(overlay: Overlay) -> dict:
    dev = overlay.device
    return {
        "node": overlay.node, "mode": overlay.mode,
        "device": None if dev is None else {"name": dev.name, "vni": dev.vni, "port": dev.port,
                                            "local": str(dev.local), "mac": dev.mac, "mtu": dev.mtu},
        "pod_mtu": overlay.pod_mtu,
        "peers": [{"node": p.node, "cidr": str(p.cidr), "mode": p.mode, "via": str(p.via or ""),
                   "outer": str(p.outer or ""), "mac": p.mac, "dev": p.dev, "why": p.why}
                  for p in overlay.peers],
    }


def report(overlay: Overlay, peers_file: str | None, metrics=None) -> str:
    """After a sync: every unreachable peer logged (error), counts by mode into the metrics, the
    peers' record written for `pycni inspect`; returns the summary line."""
    counts = {m: 0 for m in ("direct", "vxlan", "unreachable")}
    for p in overlay.peers:
        counts[p.mode] += 1
        if p.mode == "unreachable":
            log.error(f"agent: node {p.node}'s pods {p.cidr} are UNREACHABLE from this node: {p.why}")
            print(f"agent: unreachable: node {p.node} {p.cidr}: {p.why}", flush=True)
    if metrics is not None:
        for mode, n in counts.items():
            metrics.peers.labels(mode).set(n)
    if peers_file:
        write_peers(peers_file, peers_record(overlay))
    return ", ".join(f"{n} {mode}" for mode, n in counts.items())


def write_peers(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------------ the agent's wiring

def check(opts: TunnelOptions) -> None:
    ipr = links.open_rtnl()
    try:
        require_kernel(ipr, opts)
    finally:
        ipr.close()


def probe_now(me: str, opts: TunnelOptions, nodes: list) -> Facts:
    ipr = links.open_rtnl()
    try:
        return probe(ipr, me, nodes, opts)
    finally:
        ipr.close()


def publisher(node: str, kubeconfig: str | None):
    """A call that sets this node's VTEP MAC annotation through the API (a merge patch of the
    Node's metadata, as flannel publishes its backend data)."""
    clusters = []

    def publish(mac: str) -> None:
        if not clusters:
            clusters.append(kube.load(kubeconfig))
        clusters[0].merge_patch(f"/api/v1/nodes/{node}", {"metadata": {"annotations": {ANNOTATION_MAC: mac}}})
        log.info(f"agent: published {ANNOTATION_MAC}={mac} on node {node}")

    return publish


def published(state, publish, done: dict) -> dict:
    """After a sync: when this node's Node does not carry its device's MAC yet, publish it (a
    failure is logged; the next sync tries again)."""
    overlay = state.overlay
    if publish is None or overlay is None or overlay.device is None or overlay.published_mac == overlay.device.mac:
        return done
    try:
        publish(overlay.device.mac)
    except Exception as e:      # the API's refusal or a network error: the peers fall back to the derived MAC
        log.error(f"agent: publishing {ANNOTATION_MAC}: {type(e).__name__}: {e}")
    return done
