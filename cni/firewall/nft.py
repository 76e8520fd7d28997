"""nftables backend: table `inet pycni`, one `nft -f -` transaction per call.

Layout (the dispatch is by verdict maps, so the work per ADD does not grow with the pods):

    prerouting / output (nat, dstnat):  fib daddr type local jump hostports
    hostports: ip daddr . l4proto . dport vmap @hostports_ip4   (mappings with a hostIP)
               ip6 daddr . l4proto . dport vmap @hostports_ip6
               l4proto . dport vmap @hostports_any
    postrouting (nat, srcnat):  ct mark & MARK == MARK masquerade   (hairpin, localhost)
                                ip saddr vmap @masq4 ; ip6 saddr vmap @masq6   (ipMasq)
    dn-<net>-<attachment>: the attachment's DNAT rules (and the hairpin/localhost mark)
    ms-<net>-<attachment>: return for the pod network and multicast, else masquerade

Every rule of an attachment carries its tag as comment; map elements point at its chains.
Rule: render_* are pure (golden-tested); only `_nft` runs anything. An element is deleted with
"add (ours) + delete" in one transaction, which fails instead of removing another container's
element (an address or host port reused): then we read the table and delete exactly ours.
"""

from __future__ import annotations

import json
import subprocess

from ..errors import CNIError
from ..log import log
from . import FirewallSpec

TABLE = "inet pycni"
MAPS = {
    "hostports_any": "inet_proto . inet_service",
    "hostports_ip4": "ipv4_addr . inet_proto . inet_service",
    "hostports_ip6": "ipv6_addr . inet_proto . inet_service",
    "masq4": "ipv4_addr",
    "masq6": "ipv6_addr",
}


def chains(spec: FirewallSpec) -> tuple[str, str]:
    return f"dn-{spec.net_hash}-{spec.att_hash}", f"ms-{spec.net_hash}-{spec.att_hash}"


def render_base(mark: int) -> list[str]:
    t = TABLE
    out = [f"add table {t}"]
    out += [f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
            f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
            f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
            f"add chain {t} hostports"]
    out += [f"add map {t} {name} {{ type {typ} : verdict; }}" for name, typ in MAPS.items()]
    out += [f"flush chain {t} prerouting",
            f"add rule {t} prerouting fib daddr type local jump hostports",
            f"flush chain {t} output",
            f"add rule {t} output fib daddr type local jump hostports",
            f"flush chain {t} hostports",
            f"add rule {t} hostports ip daddr . meta l4proto . th dport vmap @hostports_ip4",
            f"add rule {t} hostports ip6 daddr . meta l4proto . th dport vmap @hostports_ip6",
            f"add rule {t} hostports meta l4proto . th dport vmap @hostports_any",
            f"flush chain {t} postrouting",
            f"add rule {t} postrouting ct mark & {mark:#x} == {mark:#x} masquerade",
            f"add rule {t} postrouting ip saddr vmap @masq4",
            f"add rule {t} postrouting ip6 saddr vmap @masq6"]
    return out


def _hostport_elements(spec: FirewallSpec) -> list[tuple[str, str]]:
    """(map, key) of every hostPort element of the attachment."""
    keys: dict[tuple[str, str], None] = {}
    families = {a.version for a in spec.pod_ips}
    for m in spec.mappings:
        if m.host_ip is None:
            if families:
                keys[("hostports_any", f"{m.protocol} . {m.host_port}")] = None
        elif m.host_ip.version in families:
            keys[(f"hostports_ip{m.host_ip.version}", f"{m.host_ip} . {m.protocol} . {m.host_port}")] = None
    return list(keys)


def _masq_elements(spec: FirewallSpec) -> list[tuple[str, str]]:
    if not spec.masquerade:
        return []
    return [(f"masq{a.version}", str(a.ip)) for a in spec.pod_ips]


def render_dnat_rules(spec: FirewallSpec, chain: str) -> list[str]:
    t, tag, o = TABLE, json.dumps(spec.tag), spec.options
    out = []
    for fam, ipkw, lo in ((4, "ip", "127.0.0.0/8"), (6, "ip6", None)):
        pods = spec.ips(fam)
        maps = [m for m in spec.mappings if m.applies_to(fam)]
        if not pods or not maps:
            continue
        cond = " ".join(o.conditions_v4 if fam == 4 else o.conditions_v6)
        cond = f"{cond} " if cond else ""
        if o.masq_all:
            out.append(f"add rule {t} {chain} {cond}meta nfproto ipv{fam} ct mark set ct mark | {o.mark:#x} "
                       f"comment {tag}")
        elif o.snat:
            sources = sorted({str(a.network) for a in pods}) + ([lo] if lo else [])
            out.append(f"add rule {t} {chain} {cond}{ipkw} saddr {{ {', '.join(sources)} }} "
                       f"ct mark set ct mark | {o.mark:#x} comment {tag}")
        pod = pods[0].ip
        to = f"{pod}:" if fam == 4 else f"[{pod}]:"
        for m in maps:
            daddr = f"{ipkw} daddr {m.host_ip} " if m.host_ip is not None else f"meta nfproto ipv{fam} "
            out.append(f"add rule {t} {chain} {cond}{daddr}{m.protocol} dport {m.host_port} "
                       f"dnat {ipkw} to {to}{m.container_port} comment {tag}")
    return out


def render_masq_rules(spec: FirewallSpec, chain: str) -> list[str]:
    t, tag = TABLE, json.dumps(spec.tag)
    out = []
    for a in spec.pod_ips:
        kw, mcast = ("ip", "224.0.0.0/4") if a.version == 4 else ("ip6", "ff00::/8")
        out.append(f"add rule {t} {chain} {kw} daddr {a.network} return comment {tag}")
        out.append(f"add rule {t} {chain} {kw} daddr {mcast} return comment {tag}")
    out.append(f"add rule {t} {chain} masquerade comment {tag}")
    return out


def render_add(spec: FirewallSpec) -> str:
    t = TABLE
    dn, ms = chains(spec)
    out = render_base(spec.options.mark)
    hostports, masq = _hostport_elements(spec), _masq_elements(spec)
    if hostports:
        out += [f"add chain {t} {dn}", f"flush chain {t} {dn}"] + render_dnat_rules(spec, dn)
        out += [f"add element {t} {m} {{ {k} : goto {dn} }}" for m, k in hostports]
    if masq:
        out += [f"add chain {t} {ms}", f"flush chain {t} {ms}"] + render_masq_rules(spec, ms)
        out += [f"add element {t} {m} {{ {k} : goto {ms} }}" for m, k in masq]
    return "\n".join(out) + "\n"


def render_delete(spec: FirewallSpec) -> str:
    """Delete what `render_add` made, from what the spec says; fails rather than touch others'."""
    t = TABLE
    out = []
    for chain, elements in zip(chains(spec), (_hostport_elements(spec), _masq_elements(spec))):
        out.append(f"add chain {t} {chain}")
        for m, k in elements:
            out += [f"add element {t} {m} {{ {k} : goto {chain} }}", f"delete element {t} {m} {{ {k} }}"]
        out += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
    return "\n".join(out) + "\n"


def render_delete_found(found_elements: list[tuple[str, str]], found_chains: list[str]) -> str:
    t = TABLE
    out = [f"delete element {t} {m} {{ {k} }}" for m, k in found_elements]
    for c in found_chains:
        out += [f"flush chain {t} {c}", f"delete chain {t} {c}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- running nft


def _nft(script: str, *, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True)
    if check and proc.returncode != 0:
        raise CNIError("nftables transaction failed", proc.stderr.decode(errors="replace").strip()[:2000])
    return proc


def _listing() -> list[dict] | None:
    proc = subprocess.run(["nft", "-j", "list", "table", *TABLE.split()], capture_output=True)
    if proc.returncode != 0:
        if b"No such file" in proc.stderr:
            return None
        raise CNIError("cannot list nftables table", proc.stderr.decode(errors="replace").strip()[:2000])
    return json.loads(proc.stdout).get("nftables", [])


def _key_text(key) -> str:
    if isinstance(key, dict) and "concat" in key:
        return " . ".join(str(k) for k in key["concat"])
    return str(key)


def _target(verdict) -> str:
    if isinstance(verdict, dict):
        for kind in ("goto", "jump"):
            if kind in verdict:
                return verdict[kind].get("target", "")
    return ""


def find_objects(listing: list[dict], wanted_chain) -> tuple[list[tuple[str, str]], list[str]]:
    """Elements pointing at, and chains named by, `wanted_chain(name) -> bool`."""
    elements, found = [], []
    for obj in listing:
        if "map" in obj and obj["map"].get("name") in MAPS:
            for elem in obj["map"].get("elem") or []:
                if isinstance(elem, list) and len(elem) == 2 and wanted_chain(_target(elem[1])):
                    elements.append((obj["map"]["name"], _key_text(elem[0])))
        elif "chain" in obj and wanted_chain(obj["chain"].get("name", "")):
            found.append(obj["chain"]["name"])
    return elements, found


def setup(spec: FirewallSpec) -> None:
    script = render_add(spec)
    proc = _nft(script, check=False)
    if proc.returncode == 0:
        return
    # A key held by an attachment that is gone (its DEL never ran): the last writer wins, as in
    # the reference plugin. Read the table, drop the conflicting elements, try once more.
    log.warning(f"nftables: replacing stale elements ({proc.stderr.decode(errors='replace').strip()[:200]})")
    listing = _listing() or []
    ours = set(_hostport_elements(spec) + _masq_elements(spec))
    stale = []
    for obj in listing:
        if "map" in obj:
            for elem in obj["map"].get("elem") or []:
                key = (obj["map"]["name"], _key_text(elem[0]))
                if key in ours:
                    stale.append(key)
    _nft(render_delete_found(stale, []) + script)


def teardown(spec: FirewallSpec) -> None:
    knows_keys = bool(spec.pod_ips) and bool(spec.mappings or spec.masquerade)
    if knows_keys and _nft(render_delete(spec), check=False).returncode == 0:
        return
    listing = _listing()
    if listing is None:
        return          # no table: nothing of ours here
    mine = set(chains(spec))
    elements, found = find_objects(listing, lambda name: name in mine)
    if elements or found:
        _nft(render_delete_found(elements, found))


def check(spec: FirewallSpec) -> None:
    listing = _listing()
    if listing is None:
        raise CNIError("CHECK failed: nftables table missing", TABLE)
    dn, ms = chains(spec)
    elements, found = find_objects(listing, lambda name: name in (dn, ms))
    have = set(elements)
    for chain, wanted in ((dn, _hostport_elements(spec)), (ms, _masq_elements(spec))):
        if wanted and chain not in found:
            raise CNIError("CHECK failed: firewall chain missing", f"nftables chain {chain}")
        missing = [f"{m} {{ {k} }}" for m, k in wanted if (m, k) not in have]
        if missing:
            raise CNIError("CHECK failed: firewall rule missing", f"nftables elements {', '.join(missing)}")


def gc(network: str, valid_hashes: set[str]) -> None:
    """`valid_hashes`: full attachment hashes of the attachments to keep."""
    from . import network_hash

    valid_hashes = {h[:16] for h in valid_hashes}
    listing = _listing()
    if listing is None:
        return
    prefixes = (f"dn-{network_hash(network)}-", f"ms-{network_hash(network)}-")

    def stale(name: str) -> bool:
        return name.startswith(prefixes) and name[len(prefixes[0]):] not in valid_hashes

    elements, found = find_objects(listing, stale)
    if elements or found:
        log.info(f"gc: removing nftables chains {found}")
        _nft(render_delete_found(elements, found))
