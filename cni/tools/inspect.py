"""`pycni inspect`: every attachment on this node, built from the live state and cross-checked.

    networks      the conflists in --conf-dir whose plugins include pycni (name, IPAM data dir,
                  policy state dir)
    interfaces    host veths carrying pycni's alias (network, container id, ifname), their bridge
                  and MAC
    addresses     the IPAM store of each network (host-local's layout)
    firewall      nftables elements of table `inet pycni` tagged with an attachment; legacy
                  iptables chains PYCNI-DN-/PYCNI-MS-<attachment>
    policy        NetworkPolicy records (pod namespace/name, set elements)
    shaping       the tbf (handle 7063:) on each host veth and on each ifb device carrying pycni's
                  ifb alias (`pycni-bw/...`), with the redirect between them
    peers         the agent's record of the other nodes: direct, vxlan or unreachable (and why)

`cross_check` is pure: it joins the sources on one identity, the attachment hash (whatever form
the veth's alias has: a hashed alias of a long id names the network by its hash, resolved against
the networks found; the container id and ifname then come from the reservation), reads holders
as DEL and GC do (a host-local id-only reservation is its container's, whatever the ifname), and
lists what does not add up — an address without an interface (a leak: the range shrinks), an interface without an
address, firewall rules or policy records without an interface. `--check` exits 1 when there are
any, as `calicoctl ipam check` does for Calico.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import json
import os
import subprocess

from cni.firewall import nft
from cni.firewall.attachment import network_hash
from cni.firewall.iptables import chain_names
from cni.firewall.policy import read_records
from cni.bandwidth.options import REDIRECT_PRIO, TBF_HANDLE
from cni.linux import tc
from cni.linux.links import attr, open_rtnl
from cni.linux.xtables import legacy_tables
from cni.spec import names
from ipam.store import DiskStore


@dataclass
class Network:
    name: str
    conflist: str
    data_dir: str | None          # None: the network has no file-backed IPAM
    policy_dir: str | None = None


@dataclass
class Attachment:
    network: str
    container_id: str
    ifname: str
    hash: str
    host_veth: str = ""
    netns: str = ""               # the pod's network namespace, when it has a name (/var/run/netns)
    bridge: str = ""
    mac: str = ""
    addresses: list[str] = field(default_factory=list)
    host_ports: list[str] = field(default_factory=list)
    firewall: str = ""
    rules: list[str] = field(default_factory=list)
    pod: str = ""
    policy_elements: int = 0
    ingress_rate: int = 0         # bits/s of the tbf on the host veth (towards the pod); 0: none
    egress_rate: int = 0          # bits/s of the tbf on the attachment's ifb (from the pod); 0: none
    ifb: str = ""


@dataclass
class Report:
    attachments: list[Attachment]
    problems: list[str]
    peers: dict | None = None     # the agent's record (cni/agent/tunnel_host.py): the other nodes, by mode


# ---------------------------------------------------------------------------- gathering (I/O)


def networks(conf_dir: str) -> list[Network]:
    out = []
    try:
        files = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return out
    for name in files:
        if not name.endswith((".conflist", ".conf", ".json")):
            continue
        path = os.path.join(conf_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                conf = json.load(f)
        except (OSError, ValueError):
            continue
        plugins = conf.get("plugins") if isinstance(conf.get("plugins"), list) else [conf]
        for p in plugins:
            if isinstance(p, dict) and p.get("type") == "pycni":
                ipam = p.get("ipam") if isinstance(p.get("ipam"), dict) else {}
                data_dir = None
                if ipam.get("type") in ("pycni-ipam", "host-local"):
                    data_dir = ipam.get("dataDir") or "/var/lib/cni/networks"
                out.append(Network(str(conf.get("name")), path, data_dir, p.get("networkPolicy") or None))
    return out


def interfaces() -> list[dict]:
    """Host veths with pycni's alias: {network, container_id, ifname, hash, veth, bridge, mac}."""
    ipr = open_rtnl()
    try:
        links = ipr.links()
    finally:
        ipr.close()
    by_index = {m["index"]: attr(m, "IFLA_IFNAME", "") for m in links}
    out = []
    for m in links:
        alias = m.get_attr("IFLA_IFALIAS") or ""
        parts = alias.split("/")
        if len(parts) == 4 and parts[0] == "pycni":
            network, cid, ifname = parts[1:]
            h = names.attachment_hash(network, cid, ifname)
        else:
            hashed = alias.split("#")
            if len(hashed) != 3 or hashed[0] != "pycni":
                continue
            network, cid, ifname, h = "", "?", "?", hashed[2]
        out.append({"network": network, "network_hash": network_hash(network) if network else hashed[1],
                    "container_id": cid, "ifname": ifname, "hash": h, "index": m["index"],
                    "veth": attr(m, "IFLA_IFNAME", ""), "bridge": by_index.get(attr(m, "IFLA_MASTER", 0), ""),
                    "mac": attr(m, "IFLA_ADDRESS", "")})
    peers = _peer_namespaces()
    for link in out:
        link["netns"] = peers.get(link["veth"], "")
    return out


def _peer_namespaces() -> dict[str, str]:
    """host veth -> the named network namespace its peer is in (`ip` knows the names by nsid)."""
    def run(*args: str):
        try:
            p = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
            return json.loads(p.stdout or "[]")
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return []

    names_by_id = {n.get("nsid"): n.get("name") for n in run("netns", "list-id") if n.get("name")}
    return {link["ifname"]: f"/var/run/netns/{names_by_id[link['link_netnsid']]}"
            for link in run("link", "show", "type", "veth")
            if link.get("link_netnsid") in names_by_id}


def shaping(links: list[dict]) -> tuple[dict[str, dict], list[dict]]:
    """({attachment hash: {"ingress": bits/s, "egress": bits/s, "ifb": name, "redirect": bool}},
    [every ifb device with pycni's ifb alias: {"network", "hash", "ifb"}]). tbfs are read only
    where they carry pycni's handle."""
    def root_tbf(index: int) -> int:
        for q in tc.qdiscs(ipr, index):
            parms = tc.tbf_parms(q) if q["handle"] == TBF_HANDLE and q["parent"] == tc.TC_H_ROOT else None
            if parms:
                return parms["rate"] * 8
        return 0

    ipr = open_rtnl()
    try:
        ifbs = []
        for m in ipr.links():
            alias = m.get_attr("IFLA_IFALIAS") or ""
            parts, hashed = alias.split("/"), alias.split("#")
            if len(parts) == 4 and parts[0] == names.IFB_MARK:
                network, h = parts[1], names.attachment_hash(*parts[1:])
            elif len(hashed) == 3 and hashed[0] == names.IFB_MARK:
                network, h = f"#{hashed[1]}", hashed[2]
            else:
                continue
            ifbs.append({"network": network, "hash": h, "ifb": attr(m, "IFLA_IFNAME", ""), "index": m["index"]})
        by_hash = {i["hash"]: i for i in ifbs}
        out = {}
        for link in links:
            ifb = by_hash.get(link["hash"])
            targets = {tc.redirect_target(f) for f in tc.filters(ipr, link["index"])
                       if tc.filter_prio(f) == REDIRECT_PRIO}
            state = {"ingress": root_tbf(link["index"]), "egress": root_tbf(ifb["index"]) if ifb else 0,
                     "ifb": ifb["ifb"] if ifb else "", "redirect": bool(ifb) and ifb["index"] in targets}
            if state["ingress"] or state["ifb"]:
                out[link["hash"]] = state
    finally:
        ipr.close()
    return out, ifbs


def reservations(net: Network) -> dict[str, tuple[str, str]]:
    """address -> (container id, ifname) in the network's IPAM store."""
    if net.data_dir is None:
        return {}
    return {str(ip): owner for ip, owner in DiskStore(os.path.join(net.data_dir, net.name)).holders().items()}


def nft_elements() -> list[tuple[str, str, str, str]]:
    try:
        listing = nft._listing()
    except Exception:           # no nftables here: nothing of ours either
        return []
    return nft.tagged_elements(listing) if listing else []


def iptables_chains() -> set[str]:
    """PYCNI-DN-/PYCNI-MS- chains in the legacy nat tables."""
    out: set[str] = set()
    for family, program in ((4, "iptables-legacy-save"), (6, "ip6tables-legacy-save")):
        if "nat" not in legacy_tables(family):
            continue
        try:
            text = subprocess.run([program, "-t", "nat"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        out.update(line[1:].split()[0] for line in text.splitlines()
                   if line.startswith((":PYCNI-DN-", ":PYCNI-MS-")))
    return out


def policy_records(net: Network) -> dict[str, dict]:
    return read_records(net.policy_dir, net.name) if net.policy_dir else {}


def gather(conf_dir: str, peers_file: str | None = None) -> Report:
    nets = networks(conf_dir)
    links = interfaces()
    shaped, ifbs = shaping(links)
    report = cross_check(nets, links, {n.name: reservations(n) for n in nets}, nft_elements(),
                         iptables_chains(), {n.name: policy_records(n) for n in nets}, shaped, ifbs)
    report.peers = read_peers(peers_file) if peers_file else None
    return report


def read_peers(path: str) -> dict | None:
    """The agent's peers record, or None when there is none (no agent on this node)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# ---------------------------------------------------------------------------- the join (pure)


def cross_check(nets: list[Network], links: list[dict], held: dict[str, dict[str, tuple[str, str]]],
                elements: list[tuple[str, str, str, str]], chains: set[str],
                records: dict[str, dict[str, dict]], shaped: dict[str, dict] | None = None,
                ifbs: list[dict] | None = None) -> Report:
    atts: dict[str, Attachment] = {}
    problems: list[str] = []
    by_network_hash = {network_hash(n.name): n.name for n in nets}
    for link in links:
        network = link["network"] or by_network_hash.get(link.get("network_hash", ""), f"#{link.get('network_hash')}")
        a = atts.setdefault(link["hash"], Attachment(network, link["container_id"], link["ifname"], link["hash"]))
        a.host_veth, a.bridge, a.mac = link["veth"], link["bridge"], link["mac"]
        a.netns = link.get("netns", "")
    with_ipam = {n.name for n in nets if n.data_dir is not None}
    for network, addrs in held.items():
        ifnames = {a.ifname for a in atts.values() if a.network == network and a.ifname != "?"} | {"eth0"}
        for ip, (cid, ifname) in sorted(addrs.items()):
            # the attachment(s) holding it: one hash, or for an id-only file each of its container's
            found = [h for h in dict.fromkeys(names.attachment_hash(network, cid, i) for i in ([ifname] if ifname else ifnames))
                     if h in atts]
            if not ifname:
                found += [h for h, a in atts.items() if a.network == network and a.container_id == cid and h not in found]
            if not found:
                problems.append(f"address without interface: {network} {ip} held by {cid}/{ifname} "
                                "(no host veth: a leaked reservation)")
                continue
            for h in found:
                a = atts[h]
                if a.container_id == "?":       # a hashed alias: the reservation names it
                    a.container_id = cid
                    a.ifname = ifname or next(i for i in ifnames if names.attachment_hash(network, cid, i) == h)
                a.addresses.append(ip)
    for a in atts.values():
        if a.network in with_ipam and not a.addresses:
            problems.append(f"interface without address: {a.network} {a.container_id}/{a.ifname} "
                            f"({a.host_veth}: no reservation in the IPAM store)")
    by_tag = {f"{network_hash(a.network)}-{a.hash[:16]}": a for a in atts.values()}
    for name, key, data, comment in elements:
        if not comment:
            continue            # shared by the network's pods (pod networks, hairpin sources)
        tag = comment.split(" ", 1)[0]
        a = by_tag.get(tag)
        if a is None:
            problems.append(f"firewall element without interface: nftables {name} {{ {key}"
                            f"{' : ' + data if data else ''} }} ({comment})")
            continue
        a.firewall = "nftables"
        a.rules.append(f"{name} {{ {key}{' : ' + data if data else ''} }}")
        if name.startswith(("hostports", "hostip")):
            a.host_ports.append(f"{key.replace(' . ', ' ')} -> {data.replace(' . ', ':')}")
    by_chain = {c: a for a in atts.values() for c in chain_names(a.hash)}
    for chain in sorted(chains):
        a = by_chain.get(chain)
        if a is None:
            problems.append(f"firewall chain without interface: iptables nat {chain}")
            continue
        a.firewall = "iptables"
        a.rules.append(f"nat {chain}")
    for network, recs in records.items():
        for name, rec in sorted(recs.items()):
            a = atts.get(name)
            pod = "/".join(rec.get("pod") or ())
            if a is None:
                problems.append(f"network policy record without interface: {network} pod {pod} "
                                f"{', '.join(rec.get('ips') or ())} ({len(rec.get('elements') or ())} set elements)")
                continue
            a.pod, a.policy_elements = pod, len(rec.get("elements") or ())
    for h, state in (shaped or {}).items():
        a = atts.get(h)
        if a is not None:
            a.ingress_rate, a.egress_rate, a.ifb = state["ingress"], state["egress"], state["ifb"]
            if state["ifb"] and not (state["egress"] and state["redirect"]):
                problems.append(f"egress shaping incomplete: {a.network} {a.container_id}/{a.ifname} "
                                f"({state['ifb']}: {'no tbf' if not state['egress'] else 'no redirect from ' + a.host_veth})")
    for ifb in ifbs or ():
        if ifb["hash"] not in atts:
            problems.append(f"ifb without interface: {ifb['ifb']} of {ifb['network']} (attachment "
                            f"{ifb['hash'][:16]}: a leaked ifb device)")
    ordered = sorted(atts.values(), key=lambda a: (a.network, a.container_id, a.ifname))
    return Report(ordered, problems)


# ---------------------------------------------------------------------------- output


def render_table(report: Report) -> str:
    head = ("NETWORK", "CONTAINER", "IFNAME", "POD", "HOST VETH", "BRIDGE", "MAC", "ADDRESSES", "HOST PORTS",
            "FIREWALL", "SHAPING")
    rows = [(a.network, a.container_id[:16], a.ifname, a.pod or "-", a.host_veth, a.bridge or "-", a.mac,
             ",".join(a.addresses) or "-", ",".join(a.host_ports) or "-",
             f"{a.firewall} ({len(a.rules)})" if a.firewall else "-", shaping_text(a)) for a in report.attachments]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.append(f"{len(report.attachments)} attachments, {len(report.problems)} problems")
    lines += [f"  problem: {p}" for p in report.problems]
    if report.peers is not None:
        lines += render_peers(report.peers)
    return "\n".join(lines) + "\n"


def rate_text(bits: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if bits >= size:
            return f"{bits / size:g}{unit}bit/s"
    return f"{bits}bit/s"


def shaping_text(a: Attachment) -> str:
    parts = ([f"in {rate_text(a.ingress_rate)}"] if a.ingress_rate else []) + \
        ([f"out {rate_text(a.egress_rate)} ({a.ifb})"] if a.egress_rate else [])
    return ", ".join(parts) or "-"


def render_peers(record: dict) -> list[str]:
    dev = record.get("device")
    tunnel = (f"tunnel {dev['name']}: VNI {dev['vni']}, UDP {dev['port']}, outer source {dev['local']}, "
              f"VTEP MAC {dev['mac']}, MTU {dev['mtu']}" if dev else "no tunnel device")
    lines = ["", f"peers of {record.get('node')} (mode {record.get('mode')}; {tunnel}; pod MTU "
                 f"{record.get('pod_mtu') or 'default'})"]
    head = ("NODE", "POD CIDR", "MODE", "VIA", "OUTER DST", "DEV", "WHY")
    rows = [(p.get("node", ""), p.get("cidr", ""), p.get("mode", ""), p.get("via") or "-", p.get("outer") or "-",
             p.get("dev") or "-", p.get("why") or "") for p in record.get("peers") or ()]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    return lines


def render_json(report: Report) -> str:
    out = {"attachments": [asdict(a) for a in report.attachments], "problems": report.problems}
    if report.peers is not None:
        out["peers"] = report.peers
    return json.dumps(out, indent=2) + "\n"


def main(args) -> int:
    report = gather(args.conf_dir, getattr(args, "peers_file", None))
    print(render_json(report) if args.json else render_table(report), end="")
    return 1 if args.check and report.problems else 0
