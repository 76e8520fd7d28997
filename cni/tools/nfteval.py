"""A packet through pycni's own nftables tables, evaluated from the kernel's listing (`nft -j`):
which rules match, in which order, what they change (ct mark, DNAT, masquerade) and the verdict.
Used by `pycni explain`; the test compares it with the kernel's own trace of a real packet.

It evaluates the expressions pycni's tables use (addresses, l4proto, ports, fib daddr type, ct
mark and state, nfproto, concatenations, named and anonymous sets with prefixes and ranges, maps
for DNAT) and the statements (jump, goto, return, accept, drop, counter, ct mark set, dnat,
masquerade). An expression it does not know makes the rule "unknown" (reported, not guessed).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

TABLES = ("pycni", "pycni-agent", "pycni-policy")
HOOK_ORDER = {"prerouting": 0, "input": 1, "forward": 1, "output": 0, "postrouting": 2}


class Unknown(Exception):
    pass


@dataclass
class Packet:
    family: int
    saddr: Any
    daddr: Any
    proto: str = "tcp"
    dport: int | None = None
    mark: int = 0
    state: str = "new"
    local: frozenset = frozenset()      # the node's own addresses (fib daddr type local)


@dataclass
class Hit:
    hook: str
    table: str
    chain: str
    rule: str
    verdict: str


@dataclass
class Table:
    name: str
    chains: dict[str, dict] = field(default_factory=dict)    # name -> chain object (hook, prio, type)
    rules: dict[str, list[dict]] = field(default_factory=dict)
    sets: dict[str, dict] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)      # rule handle -> its text


def load(names=TABLES, run=None) -> list[Table]:
    """The tables as the kernel holds them (missing ones are skipped)."""
    run = run or (lambda args: subprocess.run(["nft", *args], capture_output=True, text=True))
    out = []
    for name in names:
        js = run(["-j", "list", "table", "inet", name])
        if js.returncode != 0:
            continue
        t = Table(name)
        for obj in json.loads(js.stdout)["nftables"]:
            if "chain" in obj:
                t.chains[obj["chain"]["name"]] = obj["chain"]
            elif "rule" in obj:
                t.rules.setdefault(obj["rule"]["chain"], []).append(obj["rule"])
            elif "set" in obj:
                t.sets[obj["set"]["name"]] = obj["set"]
            elif "map" in obj:
                t.sets[obj["map"]["name"]] = obj["map"]
        text = run(["-a", "list", "table", "inet", name]).stdout
        for line in text.splitlines():
            body, sep, handle = line.strip().rpartition(" # handle ")
            if sep and handle.isdigit() and not body.startswith(("table", "chain", "set", "map", "type", "elements")):
                t.texts[int(handle)] = body
        out.append(t)
    return out


# ------------------------------------------------------------------------------ values


def _addr(text: str):
    return ipaddress.ip_address(text)


_KEYED = {   # meta and ct keys explain can answer for a packet
    ("meta", "l4proto"): lambda pkt: pkt.proto,
    ("meta", "nfproto"): lambda pkt: "ipv4" if pkt.family == 4 else "ipv6",
    ("meta", "nftrace"): lambda pkt: 0,
    ("ct", "mark"): lambda pkt: pkt.mark,
    ("ct", "state"): lambda pkt: pkt.state,
}


def _value(expr, pkt: Packet):
    """The packet's value of an expression (raises Unknown, or returns None when the expression
    does not apply to this packet, e.g. `ip saddr` on IPv6: then the rule does not match)."""
    if isinstance(expr, dict):
        if "payload" in expr:
            p = expr["payload"]
            proto, fld = p.get("protocol"), p.get("field")
            if proto in ("ip", "ip6"):
                if (proto == "ip") != (pkt.family == 4):
                    return None
                if fld in ("saddr", "daddr"):
                    return getattr(pkt, fld)
            if proto in ("th", "tcp", "udp", "sctp") and fld == "dport":
                if proto != "th" and proto != pkt.proto:
                    return None
                return pkt.dport
            if proto in ("icmp", "icmpv6") and pkt.proto != proto:
                return None         # (explain models TCP, UDP and SCTP packets)
            raise Unknown(f"payload {p}")
        for kind in ("meta", "ct"):
            if kind in expr:
                key = expr[kind]["key"]
                if (kind, key) not in _KEYED:
                    raise Unknown(f"{kind} {key}")
                return _KEYED[kind, key](pkt)
        if "fib" in expr:
            f = expr["fib"]
            if f.get("result") == "type" and f.get("flags") == ["daddr"]:
                return "local" if pkt.daddr in pkt.local else "unicast"
            raise Unknown(f"fib {f}")
        for op, apply in (("&", int.__and__), ("|", int.__or__)):
            if op in expr:
                a, b = expr[op]
                return apply(_value(a, pkt), int(b))
        if "concat" in expr:
            parts = [_value(e, pkt) for e in expr["concat"]]
            return None if any(p is None for p in parts) else tuple(parts)
    raise Unknown(f"expression {expr!r}")


def _same(val, elem) -> bool:
    """`val` (the packet's) against one element or literal of a set or a match."""
    if isinstance(elem, dict):
        if "elem" in elem:
            return _same(val, elem["elem"]["val"])
        if "prefix" in elem:
            try:
                return _addr(str(val)) in ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
            except ValueError:
                return False
        if "range" in elem:
            lo, hi = elem["range"]
            if isinstance(lo, (int, float)):
                return isinstance(val, int) and lo <= val <= hi
            return _addr(str(lo)) <= _addr(str(val)) <= _addr(str(hi))
        if "concat" in elem:
            return isinstance(val, tuple) and len(val) == len(elem["concat"]) and \
                all(_same(v, e) for v, e in zip(val, elem["concat"]))
        if "set" in elem:
            return any(_same(val, e) for e in elem["set"])
        raise Unknown(f"element {elem!r}")
    if isinstance(val, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        try:
            return val == _addr(str(elem))
        except ValueError:
            return False
    if isinstance(val, int) and isinstance(elem, str) and elem.isdigit():
        return val == int(elem)
    return val == elem


def _in(val, right, table: Table) -> bool:
    if isinstance(right, str) and right.startswith("@"):
        s = table.sets.get(right[1:])
        if s is None:
            raise Unknown(f"set {right}")
        elems = s.get("elem") or []
        keys = [e[0] if isinstance(e, list) else e for e in elems]
        return any(_same(val, k) for k in keys)
    if isinstance(right, list):           # ct state { established, related }
        return any(_same(val, r) for r in right)
    return _same(val, right)


def _map_lookup(key, ref: str, table: Table):
    s = table.sets.get(ref[1:])
    if s is None:
        raise Unknown(f"map {ref}")
    for e in s.get("elem") or []:
        if isinstance(e, list) and _same(key, e[0]):
            return e[1]
    return None


# ------------------------------------------------------------------------------ chains


def _text(table: Table, rule: dict) -> str:
    """The rule as nft lists it, counters left out (they change with every packet)."""
    text = table.texts.get(rule.get("handle"), json.dumps(rule["expr"]))
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text)


def run_chain(table: Table, chain: str, pkt: Packet, hook: str, hits: list[Hit], nat: list[str],
              depth: int = 0) -> str:
    """'accept', 'drop', 'return' or 'continue' (the end of a regular chain)."""
    if depth > 16:
        raise Unknown("chain nesting too deep")
    for rule in table.rules.get(chain, []):
        verdict = "continue"
        matched = True
        for e in rule["expr"]:
            if "match" in e:
                m = e["match"]
                val = _value(m["left"], pkt)
                if val is None:
                    matched = False
                    break
                hit = _in(val, m["right"], table)
                if (m["op"] in ("==", "in") and not hit) or (m["op"] == "!=" and hit):
                    matched = False
                    break
            elif "counter" in e or "log" in e:
                continue
            elif "mangle" in e:
                key = e["mangle"]["key"]
                if key.get("meta", {}).get("key") == "nftrace":
                    continue
                if key.get("ct", {}).get("key") == "mark":
                    pkt.mark = _value(e["mangle"]["value"], pkt)
                    continue
                raise Unknown(f"mangle {key}")
            elif "dnat" in e:
                d = e["dnat"]
                target = None
                if isinstance(d.get("addr"), dict) and "map" in d["addr"]:
                    key = _value(d["addr"]["map"]["key"], pkt)
                    target = _map_lookup(key, d["addr"]["map"]["data"], table) if key is not None else None
                if target is None:
                    matched = False
                    break
                addr, port = target["concat"] if isinstance(target, dict) else (target, pkt.dport)
                nat.append(f"DNAT {pkt.daddr}:{pkt.dport} -> {addr}:{port}")
                pkt.daddr, pkt.dport = _addr(str(addr)), int(port)
                verdict = "accept"
                break
            elif "masquerade" in e:
                nat.append("masquerade")
                verdict = "accept"
                break
            elif "jump" in e or "goto" in e:
                kind = "jump" if "jump" in e else "goto"
                target = e[kind]["target"]
                hits.append(Hit(hook, table.name, chain, _text(table, rule), f"{kind} {target}"))
                sub = run_chain(table, target, pkt, hook, hits, nat, depth + 1)
                if sub in ("accept", "drop") or kind == "goto":
                    return sub if sub != "return" else "continue"
                matched = None          # recorded already; go on with the next rule
                break
            elif "return" in e:
                verdict = "return"
                break
            elif "accept" in e:
                verdict = "accept"
                break
            elif "drop" in e:
                verdict = "drop"
                break
            else:
                raise Unknown(f"statement {e!r}")
        if matched is None or not matched:
            continue
        hits.append(Hit(hook, table.name, chain, _text(table, rule), verdict))
        if verdict != "continue":
            return verdict
    return "continue"


def run_hook(tables: list[Table], hook: str, pkt: Packet, hits: list[Hit], nat: list[str]) -> str:
    """Every base chain of our tables on `hook`, by priority: 'accept' or 'drop'."""
    chains = sorted(((c.get("prio", 0), t, name) for t in tables for name, c in t.chains.items()
                     if c.get("hook") == hook), key=lambda x: x[0])
    for _, table, name in chains:
        v = run_chain(table, name, pkt, hook, hits, nat)
        if v == "drop":
            return "drop"
    return "accept"
