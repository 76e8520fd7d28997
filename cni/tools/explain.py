"""`pycni explain SRC DST[:PORT[/PROTO]]`: the path a new connection's first packet takes on this
node right now, hop by hop, from the live state: the attachments (`pycni inspect`'s view), the
node's addresses and routes, and pycni's nftables tables evaluated rule by rule
(cni/tools/nfteval.py): the netfilter hooks it passes, the rules of pycni that match, the NAT they
apply (DNAT to a host port's pod, masquerade on the way out, hairpin), the NetworkPolicy verdict.

SRC and DST: a pod (namespace/name as NetworkPolicy recorded it), a container id (or a prefix of
at least 4 characters), an address (a pod's, the node's, or one outside), or `node` (SRC only:
the node itself, e.g. `node 127.0.0.1:8080/tcp` for a host port from the node).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import asdict, dataclass, field

from cni.tools import nfteval
from cni.tools.inspect import Attachment, gather, rate_text


@dataclass
class End:
    kind: str                   # pod, node, outside
    address: object
    label: str
    attachment: Attachment | None = None


@dataclass
class Explanation:
    src: str
    dst: str
    hops: list[str] = field(default_factory=list)
    rules: list[dict] = field(default_factory=list)       # the pycni rules that match, in order
    nat: list[str] = field(default_factory=list)
    verdict: str = "delivered"
    unknown: str = ""


def _node_addresses() -> set:
    out = set()
    text = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True).stdout
    for link in json.loads(text or "[]"):
        for a in link.get("addr_info", []):
            try:
                out.add(ipaddress.ip_address(a["local"]))
            except (KeyError, ValueError):
                pass
    return out


def _route(dst, src=None) -> dict:
    args = ["ip", "-j", "route", "get", str(dst)]
    if src is not None:
        args += ["from", str(src)]
    p = subprocess.run(args, capture_output=True, text=True)
    try:
        return (json.loads(p.stdout) or [{}])[0]
    except ValueError:
        return {}


def parse_target(text: str) -> tuple[str, int | None, str]:
    """DST[:PORT[/PROTO]], IPv6 in brackets: ('fd00::1', 80, 'tcp')."""
    proto = "tcp"
    if "/" in text and not text.rsplit("/", 1)[1].isdigit():
        text, proto = text.rsplit("/", 1)
    port = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
        return host, port, proto.lower()
    if text.count(":") == 1:
        host, port_text = text.split(":")
        return host, int(port_text), proto.lower()
    return text, port, proto.lower()


def resolve(token: str, atts: list[Attachment], local: set) -> End:
    if token == "node":
        return End("node", None, "the node")
    for a in atts:
        if token in (a.pod, a.container_id) or (len(token) >= 4 and a.container_id.startswith(token)):
            if not a.addresses:
                raise SystemExit(f"pycni explain: {token} has no address")
            return End("pod", ipaddress.ip_address(a.addresses[0]), a.pod or a.container_id[:12], a)
    try:
        addr = ipaddress.ip_address(token)
    except ValueError:
        raise SystemExit(f"pycni explain: {token!r} is no pod, container id or address on this node") from None
    for a in atts:
        if token in a.addresses:
            return End("pod", addr, a.pod or a.container_id[:12], a)
    if addr in local:
        return End("node", addr, f"the node ({addr})")
    return End("outside", addr, str(addr))


def explain(src_text: str, dst_text: str, conf_dir: str, tables=None, local=None, atts=None) -> Explanation:
    atts = gather(conf_dir).attachments if atts is None else atts
    local = _node_addresses() if local is None else local
    host, port, proto = parse_target(dst_text)
    src, dst = resolve(src_text, atts, local), resolve(host, atts, local)
    if src.kind == "pod" and dst.address is not None and src.address.version != dst.address.version:
        same = [a for a in src.attachment.addresses if ipaddress.ip_address(a).version == dst.address.version]
        if not same:
            raise SystemExit(f"pycni explain: {src.label} has no IPv{dst.address.version} address")
        src.address = ipaddress.ip_address(same[0])     # a pod speaks to an address of one family from its own
    if src.kind == "node" and src.address is None:     # the address the kernel would choose
        loop = dst.address.is_loopback
        src.address = ipaddress.ip_address(("127.0.0.1" if dst.address.version == 4 else "::1") if loop
                                           else _route(dst.address).get("prefsrc", "127.0.0.1"))
    tables = nfteval.load() if tables is None else tables
    def name(end: End) -> str:
        return end.label if str(end.address) in end.label else f"{end.label} ({end.address})"

    e = Explanation(name(src), f"{name(dst)}{f':{port}' if port else ''}/{proto}")
    pkt = nfteval.Packet(dst.address.version, src.address, dst.address, proto, port, local=frozenset(local))
    hits: list[nfteval.Hit] = []
    try:
        if src.kind == "pod":
            a = src.attachment
            e.hops.append(f"{src.label}: leaves its network namespace on {a.ifname} ({src.address}) through the veth "
                          f"pair to the node's {a.host_veth}, a port of bridge {a.bridge}")
            if a.egress_rate:
                e.hops.append(f"{a.host_veth}: its ingress qdisc redirects the packet to ifb {a.ifb}, whose tbf "
                              f"(7063:) holds the pod's egress to {rate_text(a.egress_rate)}; it then goes on "
                              f"as if it had come in on {a.host_veth}")
            same_bridge = dst.kind == "pod" and dst.attachment.bridge == a.bridge
            if same_bridge:
                e.hops.append(f"bridge {a.bridge}: {dst.address} is on its port {dst.attachment.host_veth}: "
                              "switched at layer 2; br_netfilter passes the packet through the IP hooks")
            else:
                e.hops.append(f"bridge {a.bridge}: addressed to the gateway (the bridge's own address): up into "
                              "the node's IP stack")
            _through(e, tables, pkt, hits, "prerouting", "PREROUTING (before routing: DNAT of host ports)")
        elif src.kind == "outside":
            r = _route(src.address)
            e.hops.append(f"{src.label}: arrives on {r.get('dev', 'the uplink')}")
            _through(e, tables, pkt, hits, "prerouting", "PREROUTING (before routing: DNAT of host ports)")
        else:
            e.hops.append(f"the node ({src.address}): a local process sends it")
            _through(e, tables, pkt, hits, "output", "OUTPUT (local traffic: DNAT of host ports from the node)")
        if e.verdict == "dropped":
            return e
        if pkt.daddr in local and src.kind != "node":
            e.hops.append(f"routing: {pkt.daddr} is the node's own address: INPUT, delivered to a local process")
            return _done(e, hits)
        target = next((a for a in atts if str(pkt.daddr) in a.addresses), None)
        r = _route(pkt.daddr)
        if src.kind != "node":
            if target is not None and src.kind == "pod" and target.bridge == src.attachment.bridge \
                    and not (dst.kind == "pod" and dst.attachment is target):
                e.hops.append(f"routing: {pkt.daddr} (after DNAT) is back on bridge {target.bridge}")
            elif not (dst.kind == "pod" and src.kind == "pod" and dst.attachment.bridge == src.attachment.bridge):
                via = f" via {r['gateway']}" if r.get("gateway") else ""
                agent = _agent_route(pkt.daddr)
                e.hops.append(f"routing: {pkt.daddr}{via} dev {r.get('dev', '?')}"
                              + (f" (the agent's route to another node's pods, {agent} proto 152)" if agent else ""))
            _through(e, tables, pkt, hits, "forward", "FORWARD (NetworkPolicy verdicts)")
            if e.verdict == "dropped":
                return e
        else:
            e.hops.append(f"routing: {pkt.daddr} dev {r.get('dev', '?')}")
        _through(e, tables, pkt, hits, "postrouting", "POSTROUTING (after routing: masquerade, hairpin SNAT)")
        tunnel = _tunnel_hops(r) if target is None else []
        if tunnel:
            e.hops += tunnel
            if tunnel[-1].endswith("dropped"):
                e.verdict = "dropped"
                return e
            return _done(e, hits)
        if target is not None:
            hairpin = src.kind == "pod" and target is src.attachment
            if hairpin and not _hairpin_on(target.host_veth):
                e.verdict = "dropped"
                e.hops.append(f"bridge {target.bridge}: the packet would leave by port {target.host_veth}, the "
                              "one it came in on, and hairpin mode is off on it (hairpinMode: false): dropped")
                return e
            e.hops.append(f"bridge {target.bridge}: out of port {target.host_veth}"
                          + (" (hairpin: back through the port it came in on)" if hairpin else "")
                          + (f", through its tbf (7063:) at {rate_text(target.ingress_rate)}"
                             if target.ingress_rate else "")
                          + f" to {target.pod or target.container_id[:12]}'s {target.ifname} ({pkt.daddr}:{pkt.dport})")
        else:
            e.hops.append(f"out of {r.get('dev', '?')} to {pkt.daddr}")
        return _done(e, hits)
    except nfteval.Unknown as x:
        e.unknown = str(x)
        e.hops.append(f"(stopped: a rule explain cannot evaluate: {x})")
        return e


def _ip_json(*args: str) -> list:
    p = subprocess.run(list(args), capture_output=True, text=True)
    try:
        return json.loads(p.stdout or "[]")
    except ValueError:
        return []


def _tunnel_hops(route: dict) -> list[str]:
    """When `route` leaves through a VXLAN device: the tunnel hop (device, VNI, the FDB entry that
    gives the outer destination) and the outer packet's way out; else nothing."""
    dev, gateway = route.get("dev"), route.get("gateway")
    links = _ip_json("ip", "-j", "-d", "link", "show", "dev", dev) if dev else []
    info = (links[0].get("linkinfo") or {}) if links else {}
    if info.get("info_kind") != "vxlan":
        return []
    data = info.get("info_data") or {}
    local = data.get("local") or data.get("local6") or "?"
    mac = next((n.get("lladdr") for n in _ip_json("ip", "-j", "neigh", "show", "dev", dev)
                if gateway and n.get("dst") == gateway), None)
    outer = next((f.get("dst") for f in _ip_json("bridge", "-j", "fdb", "show", "dev", dev)
                  if mac and f.get("mac") == mac and f.get("dst")), None)
    if mac is None or outer is None:
        what = f"no neighbour entry for {gateway}" if mac is None else f"no FDB entry for {mac}"
        return [f"tunnel {dev} (VXLAN, VNI {data.get('id')}, UDP {data.get('port')}): {what}: dropped"]
    out = _route(outer)
    via = f" via {out['gateway']}" if out.get("gateway") else ""
    return [f"tunnel {dev} (VXLAN, VNI {data.get('id')}, UDP {data.get('port')}): next hop {gateway} is "
            f"{mac}, whose FDB entry sends it to {outer}: encapsulated, outer source {local}, outer "
            f"destination {outer} (the pod addresses stay inside)",
            f"outer packet: {local} -> {outer} UDP {data.get('port')}{via} dev {out.get('dev', '?')}"]


def _agent_route(addr) -> str:
    """The agent's route (routing protocol 152) covering `addr`, or ''."""
    p = subprocess.run(["ip", "-j", "-%d" % addr.version, "route", "show", "proto", "152"], capture_output=True,
                       text=True)
    try:
        routes = json.loads(p.stdout or "[]")
    except ValueError:
        return ""
    for r in routes:
        try:
            if addr in ipaddress.ip_network(r["dst"]):
                return r["dst"]
        except (KeyError, ValueError):
            continue
    return ""


def _hairpin_on(port: str) -> bool:
    try:
        with open(f"/sys/class/net/{port}/brport/hairpin_mode") as f:
            return f.read().strip() == "1"
    except OSError:
        return True             # cannot tell: do not claim a drop


def _through(e: Explanation, tables, pkt, hits, hook: str, title: str) -> None:
    before = len(hits)
    nat_before = len(e.nat)
    verdict = nfteval.run_hook(tables, hook, pkt, hits, e.nat)
    mine = hits[before:]
    e.rules += [asdict(h) for h in mine]
    line = f"netfilter {title}: " + ("; ".join(f"{h.table} {h.chain}: {h.rule} ({h.verdict})" for h in mine)
                                     if mine else "no pycni rule matches")
    if len(e.nat) > nat_before:
        line += f" => {', '.join(e.nat[nat_before:])}"
    e.hops.append(line)
    if verdict == "drop":
        e.verdict = "dropped"
        e.hops.append(f"dropped in {hook}")


def _done(e: Explanation, hits) -> Explanation:
    e.hops.append("replies: conntrack matches them to this connection, undoes the NAT and lets them pass "
                  "(established)")
    return e


def render(e: Explanation) -> str:
    lines = [f"{e.src} -> {e.dst}: {e.verdict}"]
    lines += [f"  {i}. {h}" for i, h in enumerate(e.hops, 1)]
    return "\n".join(lines) + "\n"


def main(args) -> int:
    e = explain(args.src, args.dst, args.conf_dir)
    print(json.dumps(asdict(e), indent=2) if args.json else render(e), end="")
    return 2 if e.unknown else 0
