"""Applies the agent's desired state on this node: the tunnel device and its entries
(cni/agent/tunnel_host.py), the conflist (atomic write), routes to other nodes' pod CIDRs (netlink,
marked with our routing protocol number; direct ones via the peer's InternalIP, tunnel ones onlink
through the VXLAN device) and the cluster masquerade (one nftables table, replaced in one
transaction). Every call is idempotent and writes only what differs."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from cni.agent.nodes import Desired
from cni.firewall.nft import transaction
from cni.linux.links import family, open_rtnl
from cni.linux.rtnl import RT_TABLE_MAIN, NetlinkError
from cni.spec.log import log
from cni.spec.result import IPAddress, IPNetwork
from cni.agent import tunnel_host
from cni.linux.vxlan import RTNH_F_ONLINK, replace_onlink_route
from cni.tools.install import install_conflist

RTPROT_PYCNI = 152            # routing protocol number of the agent's routes (`ip route show proto 152`)
TABLE = "inet pycni-agent"


# ------------------------------------------------------------------ conflist

def write_conflist(conf: dict, conf_dir: Path, filename: str) -> bool:
    """Install the conflist if it differs from what is there; True when written."""
    path = conf_dir / filename
    try:
        if json.loads(path.read_text()) == conf:
            return False
    except (OSError, ValueError):
        pass
    install_conflist(conf, conf_dir, filename)
    log.info(f"agent: wrote {path}")
    return True


# ------------------------------------------------------------------ routes

Hop = tuple   # (gateway, index of the device it is on-link through, or 0: the kernel picks the device)


def current_routes(ipr) -> dict[IPNetwork, Hop]:
    found = {}
    for version in (4, 6):
        for dst, dst_len, gw, onlink in ipr.gateway_routes(family(version), RTPROT_PYCNI, RT_TABLE_MAIN):
            found[ipaddress.ip_network((ipaddress.ip_address(dst), dst_len))] = (ipaddress.ip_address(gw), onlink)
    return found


def sync_routes(ipr, want: dict[IPNetwork, IPAddress], tunnel: dict[IPNetwork, IPAddress] | None = None,
                tunnel_index: int = 0) -> tuple[int, int]:
    """Make the agent's routes exactly `want` (via a peer's InternalIP) plus `tunnel` (via a peer's
    tunnel address, on-link through device `tunnel_index`); returns (added or changed, removed)."""
    hops: dict[IPNetwork, Hop] = {dst: (via, 0) for dst, via in want.items()}
    hops.update({dst: (via, tunnel_index) for dst, via in (tunnel or {}).items()})
    have = current_routes(ipr)
    removed = changed = 0
    for dst in have.keys() - hops.keys():
        try:
            ipr.delete_route(family(dst.version), str(dst.network_address), dst.prefixlen, RTPROT_PYCNI)
        except (OSError, NetlinkError) as e:    # one route that fails costs that route, no more
            log.error(f"agent: removing route {dst} via {have[dst][0]}: {e}")
            continue
        log.info(f"agent: route {dst} via {have[dst][0]} removed")
        removed += 1
    for dst, (via, index) in hops.items():
        if have.get(dst) == (via, index):
            continue
        try:
            if index:
                replace_onlink_route(ipr, str(dst.network_address), dst.prefixlen, str(via), index, RTPROT_PYCNI)
            else:
                ipr.replace_route(family(dst.version), str(dst.network_address), dst.prefixlen, str(via),
                                  RTPROT_PYCNI)
        except (OSError, NetlinkError) as e:   # e.g. ENETUNREACH: the gateway is not on a connected network (yet)
            log.error(f"agent: route {dst} via {via}: {e}")
            continue
        log.info(f"agent: route {dst} via {via}{' onlink (tunnel)' if index else ''}")
        changed += 1
    return changed, removed


# ------------------------------------------------------------------ masquerade

def render_masquerade(pod_networks: tuple[IPNetwork, ...]) -> str:
    """The whole table, replaced atomically: traffic from pod networks to anything that is not a
    pod network (nor multicast or broadcast) leaves the node with the node's address."""
    head = f"add table {TABLE}\ndelete table {TABLE}\n"
    if not pod_networks:
        return head
    lines = [f"table {TABLE} {{"]
    rules = []
    for v, addr, typ in ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr")):
        nets = [str(n) for n in pod_networks if n.version == v]
        if not nets:
            continue
        lines += [f"  set podnets{v} {{ type {typ}; flags interval; elements = {{ {', '.join(nets)} }} }}"]
        # multicast and limited broadcast never leave the node: bridged to the other pods, they
        # keep the pod's source (the plugin's own masquerade rule excludes them the same way)
        local = "{ 224.0.0.0/4, 255.255.255.255 }" if v == 4 else "ff00::/8"
        rules.append(f"    {addr} saddr @podnets{v} {addr} daddr != @podnets{v} {addr} daddr != {local} masquerade")
    lines += ["  chain postrouting {",
              "    type nat hook postrouting priority srcnat + 10; policy accept;",
              *rules, "  }", "}"]
    return head + "\n".join(lines) + "\n"


def sync_masquerade(pod_networks: tuple[IPNetwork, ...]) -> None:
    transaction(render_masquerade(pod_networks))


# ------------------------------------------------------------------ all of it

def apply(state: Desired, conf_dir: Path, conf_name: str, peers_file: str | None = None, metrics=None) -> dict:
    """One sync; returns what it did (for the log and the tests). With an overlay: the tunnel
    device and its new entries first (a route through it needs them), routes, the stale entries
    (no route uses them now), then the peers' record."""
    done: dict = {"conflist": False, "routes": (0, 0)}
    ipr = open_rtnl()
    try:
        overlay, index, remove_stale = state.overlay, 0, None
        if overlay is not None and overlay.device is not None:     # first: a clash stops the sync here
            index, writes = tunnel_host.ensure_device(ipr, overlay.device)
            added, remove_stale = tunnel_host.sync_entries(ipr, index, overlay)
            done["tunnel"] = (added + writes, 0)
            done["vtep_mac"] = overlay.device.mac
        elif overlay is not None and overlay.mode == "direct":
            tunnel_host.remove_device(ipr, overlay.device_name)
        if state.conflist is not None:
            done["conflist"] = write_conflist(state.conflist, conf_dir, conf_name)
        done["routes"] = sync_routes(ipr, state.routes, overlay.tunnel_routes if overlay else None, index)
        if remove_stale is not None:
            done["tunnel"] = (done["tunnel"][0], remove_stale())
    finally:
        ipr.close()
    sync_masquerade(state.pod_networks)
    if overlay is not None:
        done["peers"] = tunnel_host.report(overlay, peers_file, metrics)
    return done
