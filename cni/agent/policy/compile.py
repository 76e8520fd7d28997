"""From NetworkPolicies, Pods and Namespaces to what the kernel holds for this node: named sets
with their elements, and the rules of two chains. Pure; `render` makes it one nft transaction.

    forward (filter, before the node's own rules):
        ct state established,related accept          replies of allowed connections
        IPv6 neighbour discovery accept              (bridged between pods, it passes here too)
        saddr/daddr @pending{4,6} drop               pods of this node the agent has not classified
        saddr @egress_iso{4,6} jump egress           pods selected by an Egress policy
        daddr @ingress_iso{4,6} jump ingress         pods selected by an Ingress policy
    ingress / egress: one rule per (policy rule, peer kind, port kind, family) that `return`s
        when the rule allows the packet; then drop.

Traffic from the node to its pods (kubelet probes) never passes the forward hook: it is allowed.

The sets of policy i: pol{i}_sel{v} (its selected pods on this node). Of its rule j in direction
d (i = ingress, e = egress), named r{i}{d}{j}_...: pods{v} (peer pods, exact addresses), nets{v}
(ipBlocks without their excepts, intervals), ports (numbered ports: protocol . port ranges) and
named{v} (address . protocol . port of named ports, resolved per destination pod: the selected
pod for ingress, the peer pod for egress). Rules never mention a pod: the rule count grows with
policies, the element count with pods.

A pod of this node appears in sets as elements of its addresses; `members` lists, per pod, each
(family, set, suffix) it belongs to, so the plugin can add a new pod's addresses at ADD (before
the API knows them) and remove exactly them at DEL.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from cni.agent.policy.objects import NAME_LABEL, Peer, Pod, Policy, Port, Rule

FAMILIES = ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr"))
Member = tuple[int, str, str]         # (family, set, element suffix after the address)


@dataclass
class Compiled:
    sets: dict[str, tuple[str, list[str]]] = field(default_factory=dict)   # name: (declaration, elements)
    ingress: list[str] = field(default_factory=list)
    egress: list[str] = field(default_factory=list)
    members: dict[tuple[str, str], list[Member]] = field(default_factory=dict)
    policies: int = 0                   # policies that select a pod of this node
    isolating_namespaces: set[str] = field(default_factory=set)   # namespaces with any policy

    def rule_count(self) -> int:
        return len(self.ingress) + len(self.egress)

    def element_count(self) -> int:
        return sum(len(elements) for _, elements in self.sets.values())


class _Builder:
    def __init__(self, local: set[tuple[str, str]]):
        self.local = local
        self.out = Compiled()
        self._elements: dict[str, dict[str, None]] = {}

    def declare(self, name: str, declaration: str) -> str:
        if name not in self._elements:
            self._elements[name] = {}
            self.out.sets[name] = (declaration, [])
        return name

    def element(self, name: str, text: str) -> None:
        self._elements[name][text] = None

    def pod(self, name: str, v: int, pod: Pod, suffix: str = "") -> None:
        for ip in pod.ips:
            if ip.version == v:
                self.element(name, f"{ip}{suffix}")
        if pod.key in self.local:
            members = self.out.members.setdefault(pod.key, [])
            if (v, name, suffix) not in members:
                members.append((v, name, suffix))

    def done(self) -> Compiled:
        for name, (decl, _) in self.out.sets.items():
            self.out.sets[name] = (decl, list(self._elements[name]))
        return self.out


class _Cluster:
    """The pods and namespace labels, indexed once per compile."""

    def __init__(self, pods: Iterable[Pod], namespaces: Mapping[str, Mapping[str, str]]):
        self.pods = list(pods)
        self.by_ns: dict[str, list[tuple[Pod, dict[str, str]]]] = {}
        for p in self.pods:
            self.by_ns.setdefault(p.namespace, []).append((p, p.label_map))
        self.ns_labels = {ns: dict(namespaces.get(ns) or {}) for ns in self.by_ns}
        for ns, labels in self.ns_labels.items():
            labels.setdefault(NAME_LABEL, ns)

    def selected(self, namespace: str, selector) -> list[Pod]:
        return [p for p, labels in self.by_ns.get(namespace, ()) if selector.matches(labels)]

    def peer_pods(self, peer: Peer, policy_ns: str) -> list[Pod]:
        if peer.block is not None:
            return []
        if peer.namespaces is None:
            namespaces = [policy_ns]
        else:
            namespaces = [ns for ns, labels in self.ns_labels.items() if peer.namespaces.matches(labels)]
        return [p for ns in namespaces for p, labels in self.by_ns.get(ns, ())
                if peer.pods is None or peer.pods.matches(labels)]


def _port_ranges(ports: Iterable[Port]) -> list[str]:
    """Numbered ports as `proto . lo-hi` elements, overlapping ranges merged (nft refuses overlaps)."""
    ranges: dict[str, list[list[int]]] = {}
    for p in ports:
        lo = p.port if isinstance(p.port, int) else 0
        hi = p.end_port if p.end_port is not None else (lo if isinstance(p.port, int) else 65535)
        ranges.setdefault(p.protocol, []).append([lo, hi])
    out = []
    for proto in sorted(ranges):
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges[proto]):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out += [f"{proto} . {lo}" if lo == hi else f"{proto} . {lo}-{hi}" for lo, hi in merged]
    return out


def _named(pod: Pod, ports: Iterable[Port]) -> list[str]:
    """The suffixes ` . proto . number` of `pod`'s container ports named by `ports`."""
    out = []
    for spec in ports:
        for name, proto, number in pod.ports:
            if name == spec.port and proto == spec.protocol:
                suffix = f" . {proto} . {number}"
                if suffix not in out:
                    out.append(suffix)
    return out


def _inside(pod: Pod, nets: list) -> bool:
    return any(ip in n for ip in pod.ips for n in nets if n.version == ip.version)


def _rule(b: _Builder, cluster: _Cluster, pol: Policy, sel: dict[int, str], prefix: str,
          rule: Rule, ingress: bool) -> list[str]:
    """The chain rules of one policy rule. In ingress the peer is the source and named ports are
    the selected pod's; in egress the peer is the destination and named ports are the peer's."""
    me, peer_dir = ("daddr", "saddr") if ingress else ("saddr", "daddr")
    lines: list[str] = []
    peer_pods: list[Pod] = []
    nets: list = []
    if rule.peers is not None:
        seen: set[tuple[str, str]] = set()
        for peer in rule.peers:
            if peer.block is not None:
                nets.extend(peer.block)
            for p in cluster.peer_pods(peer, pol.namespace):
                if p.key not in seen:
                    seen.add(p.key)
                    peer_pods.append(p)
    has_selectors = rule.peers is not None and any(p.block is None for p in rule.peers)
    has_blocks = rule.peers is not None and any(p.block is not None for p in rule.peers)
    numbered = [p for p in rule.ports or () if not isinstance(p.port, str)]
    named = [p for p in rule.ports or () if isinstance(p.port, str)]
    ports_set = None
    if numbered:
        ports_set = b.declare(f"{prefix}_ports", "type inet_proto . inet_service; flags interval;")
        for e in _port_ranges(numbered):
            b.element(ports_set, e)
    for v, kw, typ in FAMILIES:
        peer_matches: list[str] = []
        if rule.peers is None:
            peer_matches = [""]
        else:
            if has_selectors:
                s = b.declare(f"{prefix}_pods{v}", f"type {typ};")
                for p in peer_pods:
                    b.pod(s, v, p)
                peer_matches.append(f" {kw} {peer_dir} @{s}")
            if has_blocks:
                s = b.declare(f"{prefix}_nets{v}", f"type {typ}; flags interval;")
                for n in ipaddress.collapse_addresses(n for n in nets if n.version == v):
                    b.element(s, str(n))
                peer_matches.append(f" {kw} {peer_dir} @{s}")
        head = f"{kw} {me} @{sel[v]}"
        if rule.ports is None:
            lines += [f"{head}{m} return" for m in peer_matches]
            continue
        if ports_set:
            lines += [f"{head}{m} meta l4proto . th dport @{ports_set} return" for m in peer_matches]
        if named:
            s = b.declare(f"{prefix}_named{v}", f"type {typ} . inet_proto . inet_service;")
            if ingress:     # the selected pods' own ports, from the peers in peer_matches
                for p in cluster.selected(pol.namespace, pol.selector):
                    if p.key in b.local:
                        for suffix in _named(p, named):
                            b.pod(s, v, p, suffix)
                lines += [f"{kw} daddr . meta l4proto . th dport @{s}{m} return" for m in peer_matches]
            else:           # the peers' ports: the set holds only peers, so no other peer match
                targets = cluster.pods if rule.peers is None else \
                    peer_pods + [p for p in cluster.pods if nets and _inside(p, nets)]
                for p in targets:
                    for suffix in _named(p, named):
                        b.pod(s, v, p, suffix)
                lines.append(f"{head} {kw} daddr . meta l4proto . th dport @{s} return")
    return lines


def compile_policies(policies: Iterable[Policy], pods: Iterable[Pod],
                     namespaces: Mapping[str, Mapping[str, str]], node: str) -> Compiled:
    """`pods`: every pod of the cluster with its addresses (those of this node as the plugin
    recorded them, when it did); `node`: this node's name."""
    cluster = _Cluster(pods, namespaces)
    local = {p.key for p in cluster.pods if p.node == node}
    b = _Builder(local)
    iso = {}
    for v, kw, typ in FAMILIES:
        b.declare(f"pending{v}", f"type {typ};")
        iso[("ingress", v)] = b.declare(f"ingress_iso{v}", f"type {typ};")
        iso[("egress", v)] = b.declare(f"egress_iso{v}", f"type {typ};")
    for i, pol in enumerate(sorted(policies, key=lambda p: (p.namespace, p.name))):
        b.out.isolating_namespaces.add(pol.namespace)
        selected = [p for p in cluster.selected(pol.namespace, pol.selector) if p.key in local]
        if not selected:
            continue            # selects no pod of this node: nothing to enforce here
        b.out.policies += 1
        sel = {}
        for v, kw, typ in FAMILIES:
            sel[v] = b.declare(f"pol{i}_sel{v}", f"type {typ};")
            for p in selected:
                b.pod(sel[v], v, p)
                for direction, rules in (("ingress", pol.ingress), ("egress", pol.egress)):
                    if rules is not None:
                        b.pod(iso[(direction, v)], v, p)
        for j, rule in enumerate(pol.ingress or ()):
            b.out.ingress += _rule(b, cluster, pol, sel, f"r{i}i{j}", rule, ingress=True)
        for j, rule in enumerate(pol.egress or ()):
            b.out.egress += _rule(b, cluster, pol, sel, f"r{i}e{j}", rule, ingress=False)
    return b.done()


ND_TYPES = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, nd-redirect"


def render(c: Compiled, table: str, pending: Mapping[int, Iterable[str]] = {}) -> str:
    """The whole table, replaced in one transaction (packets see the old or the new, never
    neither). `pending`: addresses per family to deny until classified."""
    lines = [f"add table {table}", f"delete table {table}", f"table {table} {{"]
    for name, (decl, elements) in c.sets.items():
        extra = list(pending.get(4 if name == "pending4" else 6, ())) if name.startswith("pending") else []
        body = elements + [e for e in extra if e not in elements]
        lines.append(f"  set {name} {{ {decl}" + (f" elements = {{ {', '.join(body)} }}" if body else "") + " }")
    lines += ["  chain forward {",
              "    type filter hook forward priority filter - 10; policy accept;",
              "    ct state established,related accept",
              f"    icmpv6 type {{ {ND_TYPES} }} accept"]
    for v, kw, _ in FAMILIES:
        lines += [f"    {kw} saddr @pending{v} drop", f"    {kw} daddr @pending{v} drop"]
    for v, kw, _ in FAMILIES:
        lines.append(f"    {kw} saddr @egress_iso{v} jump egress")
    for v, kw, _ in FAMILIES:
        lines.append(f"    {kw} daddr @ingress_iso{v} jump ingress")
    lines.append("  }")
    for chain in ("ingress", "egress"):
        lines.append(f"  chain {chain} {{")
        lines += [f"    {r}" for r in getattr(c, chain)]
        lines += ["    counter drop", "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"
