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
FIXED_SETS = ("pending4", "ingress_iso4", "egress_iso4", "pending6", "ingress_iso6", "egress_iso6")
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
        self._members: dict[tuple[str, str], dict[Member, None]] = {}
        self._texts: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        self.memo: dict[tuple, str] = {}        # what a set holds -> the set that holds it

    def _addresses(self, pod: Pod, v: int) -> list[str]:
        texts = self._texts.get(pod.key)
        if texts is None:
            texts = self._texts[pod.key] = ([str(ip) for ip in pod.ips if ip.version == 4],
                                            [str(ip) for ip in pod.ips if ip.version == 6])
        return texts[0] if v == 4 else texts[1]

    def declare(self, name: str, declaration: str) -> str:
        if name not in self._elements:
            self._elements[name] = {}
            self.out.sets[name] = (declaration, [])
        return name

    def element(self, name: str, text: str) -> None:
        self._elements[name][text] = None

    def pod(self, name: str, v: int, pod: Pod, suffix: str = "") -> None:
        texts = self._addresses(pod, v)
        elements = self._elements[name]
        for text in texts:
            elements[text + suffix] = None
        # a pod of this node is a member for the families it has, or both while it has no address
        if pod.key in self.local and (texts or not pod.ips):
            self._members.setdefault(pod.key, {})[(v, name, suffix)] = None

    def done(self) -> Compiled:
        """Sets that can never match (no element, and no pod of this node that the plugin may add)
        take their rules with them; sets equal in content (declaration, elements, and the pods of
        this node in them) become one. Fewer sets is a smaller cache for nft to load at every ADD."""
        out = self.out
        in_set: dict[str, list] = {name: [] for name in out.sets}
        for key, members in self._members.items():
            for v, name, suffix in members:
                in_set[name].append((key, v, suffix))
        rename: dict[str, str | None] = {}
        canonical: dict[tuple, str] = {}
        for name, (decl, _) in out.sets.items():
            elements = self._elements[name]
            if name in FIXED_SETS:
                rename[name] = name
            elif not elements and not in_set[name]:
                rename[name] = None
            else:
                signature = (decl, tuple(sorted(elements)), tuple(sorted(in_set[name])))
                rename[name] = canonical.setdefault(signature, name)

        def rewrite(rule: str) -> str | None:
            words = rule.split(" ")
            for i, w in enumerate(words):
                if w.startswith("@"):
                    target = rename[w[1:]]
                    if target is None:
                        return None
                    words[i] = "@" + target
            return " ".join(words)

        # merged sets make rules of policies alike identical: each once (the first keeps its place)
        out.ingress = list(dict.fromkeys(r for r in map(rewrite, out.ingress) if r is not None))
        out.egress = list(dict.fromkeys(r for r in map(rewrite, out.egress) if r is not None))
        used = set(FIXED_SETS) | {w[1:] for r in out.ingress + out.egress for w in r.split(" ") if w.startswith("@")}
        out.sets = {name: (decl, list(self._elements[name])) for name, (decl, _) in out.sets.items() if name in used}
        for key, members in self._members.items():
            kept = {(v, rename[name], suffix): None for v, name, suffix in members if rename[name] in used}
            if kept:
                out.members[key] = list(kept)
        return out


class _Cluster:
    """The pods and namespace labels, indexed once per compile."""

    def __init__(self, pods: Iterable[Pod], namespaces: Mapping[str, Mapping[str, str]]):
        self.pods = list(pods)
        self.by_ns: dict[str, list[tuple[Pod, dict[str, str]]]] = {}
        maps: dict[tuple, dict[str, str]] = {}      # pods alike in labels share one map
        for p in self.pods:
            labels = maps.get(p.labels)
            if labels is None:
                labels = maps[p.labels] = p.label_map
            self.by_ns.setdefault(p.namespace, []).append((p, labels))
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
    if not pod.ports:
        return []
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
    the selected pod's; in egress the peer is the destination and named ports are the peer's.
    A set whose content another rule already made (same peers seen from the same namespace, same
    ports) is that rule's set: policies repeat their peers, and nothing is matched twice."""
    me, peer_dir = ("daddr", "saddr") if ingress else ("saddr", "daddr")
    lines: list[str] = []
    peers = rule.peers or ()
    nets = [n for peer in peers if peer.block is not None for n in peer.block]
    # the peers' pods depend on the policy's namespace only through peers without namespaceSelector
    scope = (rule.peers, pol.namespace if any(p.block is None and p.namespaces is None for p in peers) else "")
    found: list[list[Pod]] = []

    def peer_pods() -> list[Pod]:
        if not found:
            seen: dict[tuple[str, str], Pod] = {}
            for peer in peers:
                for p in cluster.peer_pods(peer, pol.namespace):
                    seen.setdefault(p.key, p)
            found.append(list(seen.values()))
        return found[0]

    def memo(key: tuple, name: str, decl: str, fill) -> str:
        if key not in b.memo:
            b.memo[key] = b.declare(name, decl)
            fill(b.memo[key])
        return b.memo[key]

    has_selectors = any(p.block is None for p in peers)
    numbered = [p for p in rule.ports or () if not isinstance(p.port, str)]
    named = tuple(p for p in rule.ports or () if isinstance(p.port, str))
    ports_set = None
    if numbered:
        ranges = tuple(_port_ranges(numbered))
        ports_set = memo(("ports", ranges), f"{prefix}_ports", "type inet_proto . inet_service; flags interval;",
                         lambda s: [b.element(s, e) for e in ranges])
    for v, kw, typ in FAMILIES:
        peer_matches: list[str] = []
        if rule.peers is None:
            peer_matches = [""]
        else:
            if has_selectors:
                s = memo(("pods", v, scope), f"{prefix}_pods{v}", f"type {typ};",
                         lambda s: [b.pod(s, v, p) for p in peer_pods()])
                peer_matches.append(f" {kw} {peer_dir} @{s}")
            if nets:
                blocks = tuple(ipaddress.collapse_addresses(n for n in nets if n.version == v))
                s = memo(("nets", v, blocks), f"{prefix}_nets{v}", f"type {typ}; flags interval;",
                         lambda s: [b.element(s, str(n)) for n in blocks])
                peer_matches.append(f" {kw} {peer_dir} @{s}")
        head = f"{kw} {me} @{sel[v]}"
        if rule.ports is None:
            lines += [f"{head}{m} return" for m in peer_matches]
            continue
        if ports_set:
            lines += [f"{head}{m} meta l4proto . th dport @{ports_set} return" for m in peer_matches]
        if not named:
            continue
        decl = f"type {typ} . inet_proto . inet_service;"
        if ingress:     # the selected pods' own ports, from the peers in peer_matches
            def fill_selected(s: str) -> None:
                for p in cluster.selected(pol.namespace, pol.selector):
                    if p.key in b.local:
                        for suffix in _named(p, named):
                            b.pod(s, v, p, suffix)

            s = memo(("inamed", v, pol.namespace, pol.selector, named), f"{prefix}_named{v}", decl, fill_selected)
            lines += [f"{kw} daddr . meta l4proto . th dport @{s}{m} return" for m in peer_matches]
        else:           # the peers' ports: the set holds only peers, so no other peer match
            def fill_peers(s: str) -> None:
                targets = cluster.pods if rule.peers is None else \
                    peer_pods() + [p for p in cluster.pods if nets and _inside(p, nets)]
                for p in targets:
                    for suffix in _named(p, named):
                        b.pod(s, v, p, suffix)

            s = memo(("enamed", v, scope, named), f"{prefix}_named{v}", decl, fill_peers)
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
