"""Applies the agent's desired state on this node: the conflist (atomic write), routes to other
nodes' pod CIDRs (netlink, marked with our routing protocol number) and the cluster masquerade
(one nftables table, replaced in one transaction). Every call is idempotent."""

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

def current_routes(ipr) -> dict[IPNetwork, IPAddress]:
    found = {}
    for version in (4, 6):
        for msg in ipr.routes(family(version)):
            if msg["proto"] != RTPROT_PYCNI or msg["table"] != RT_TABLE_MAIN:
                continue
            dst, gw = msg.get_attr("RTA_DST"), msg.get_attr("RTA_GATEWAY")
            if dst and gw:
                found[ipaddress.ip_network(f"{dst}/{msg['dst_len']}")] = ipaddress.ip_address(gw)
    return found


def sync_routes(ipr, want: dict[IPNetwork, IPAddress]) -> tuple[int, int]:
    """Make the agent's routes exactly `want`; returns (added or changed, removed)."""
    have = current_routes(ipr)
    removed = changed = 0
    for dst in have.keys() - want.keys():
        try:
            ipr.delete_route(family(dst.version), str(dst.network_address), dst.prefixlen, RTPROT_PYCNI)
        except (OSError, NetlinkError) as e:    # one route that fails costs that route, no more
            log.error(f"agent: removing route {dst} via {have[dst]}: {e}")
            continue
        log.info(f"agent: route {dst} via {have[dst]} removed")
        removed += 1
    for dst, via in want.items():
        if have.get(dst) == via:
            continue
        try:
            ipr.replace_route(family(dst.version), str(dst.network_address), dst.prefixlen, str(via), RTPROT_PYCNI)
        except (OSError, NetlinkError) as e:   # e.g. ENETUNREACH: the gateway is not on a connected network (yet)
            log.error(f"agent: route {dst} via {via}: {e}")
            continue
        log.info(f"agent: route {dst} via {via}")
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

def apply(state: Desired, conf_dir: Path, conf_name: str) -> dict:
    """One sync; returns what it did (for the log and the tests)."""
    done: dict = {"conflist": False, "routes": (0, 0)}
    if state.conflist is not None:
        done["conflist"] = write_conflist(state.conflist, conf_dir, conf_name)
    ipr = open_rtnl()
    try:
        done["routes"] = sync_routes(ipr, state.routes)
    finally:
        ipr.close()
    sync_masquerade(state.pod_networks)
    return done
