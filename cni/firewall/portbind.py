"""A pod's bridge port speaks only for its pod: table `bridge pycni` binds each host veth (the
pod's port on the bridge) to the pod's MAC and addresses at ADD and unbinds it at DEL.

On a shared L2 bridge an address proves nothing: any pod with CAP_NET_RAW can write any frame.
The policy table (`inet pycni-policy`) decides by address, so what reaches it must be true. This
table is of the bridge family: it sees every frame that enters a pod port (hook prerouting, before
br_netfilter hands IP frames to the inet hooks) and every frame the bridge forwards from one pod
port to another (hook forward), whatever its ethertype, tag or destination.

    prerouting: iifname @ports jump from_pod
    from_pod:   the frame's source MAC is the pod's                    (macspoofchk: only this)
                untagged IPv4, IPv6 or ARP only (802.1Q/802.1ad and every other ethertype dropped)
                ARP: sender MAC the pod's, sender IP the pod's (or 0.0.0.0, an address probe)
                IPv4: source the pod's; no ICMP redirects
                IPv6: source the pod's (its addresses or its link-local; :: only for DAD and MLD);
                      no router advertisements, no redirects; a neighbour advertisement only for
                      one of the pod's own addresses
    forward:    oifname @bound iifname @ports jump to_pod
    to_pod:     (a frame between two pod ports) ARP, neighbour discovery and MLD pass; an IP
                packet must be addressed to one of the receiving pod's own addresses, and an IPv6
                one come from one of the sending pod's global addresses: broadcast, multicast and
                link-local traffic between pods never reaches a pod, so the policy chain, which
                decides by the pod's address, sees everything that does

Sets (every element tagged with the attachment as in `inet pycni`, so DEL and GC find it):
    ports  {port}             every bound port           mac   {port . MAC}
    bound  {port}             full binding (not only the MAC)
    addr4  {port . IPv4}      addr6 {port . global IPv6}  ll6  {port . link-local}
    nd6    {port . IPv6 as a 128-bit number}  (the NA target, read at @th,64,128: nft 1.0.6 has no
                                               `icmpv6 taddr`)

The table is separate from the NAT rules, so it works under either firewall backend (legacy
iptables has no bridge-family equivalent through python-iptables; ebtables is not used).

Rule: render_* and elements are pure (golden-tested); `bind`/`unbind_start`/`gc` run one nft
transaction each (a listing first only when DEL cannot name the elements); `harden_pod` writes the
pod interface's sysctls.
"""

from __future__ import annotations

import ipaddress

from cni.firewall import nft
from cni.firewall.attachment import network_hash
from cni.record import record
from cni.spec import jsonio, names
from cni.spec.errors import CNIError
from cni.spec.log import log

TABLE = "bridge pycni"
VERSION = 1
MARKER = f"base_v{VERSION}"
STRICT, MAC_ONLY = "ports", "mac"          # the two levels: full binding, or macspoofchk alone
SETS = {
    "ports": "type ifname;",
    "bound": "type ifname;",
    "mac": "type ifname . ether_addr;",
    "addr4": "type ifname . ipv4_addr;",
    "addr6": "type ifname . ipv6_addr;",
    "ll6": "type ifname . ipv6_addr;",
    "nd6": "typeof iifname . @th,64,128;",
}
# what a pod may send to another pod's port whatever the destination: resolution and group
# membership (ARP is matched by ethertype)
ND_MLD = ("mld-listener-query, mld-listener-report, mld-listener-done, nd-router-solicit, "
          "nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report")


@record
class Binding:
    network: str
    container_id: str
    ifname: str
    port: str                   # the host veth
    mac: str                    # the pod interface's MAC, lower case
    ips: tuple = ()             # ipaddress addresses handed to the pod
    level: str = STRICT         # STRICT or MAC_ONLY

    @property
    def tag(self) -> str:
        att = names.attachment_hash(self.network, self.container_id, self.ifname)[:16]
        return f"{network_hash(self.network)}-{att} pycni {self.network}/{self.container_id}/{self.ifname}"[:127]


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The pod's EUI-64 link-local address (addr_gen_mode 0, which `harden_pod` sets)."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    b[0] ^= 0x02
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\0" * 6 + bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:]))


def elements(b: Binding) -> list[tuple[str, str]]:
    """(set, key) of every element of the binding; pure."""
    port = jsonio.dumps(b.port)
    out = [("ports", port), ("mac", f"{port} . {b.mac}")]
    if b.level != STRICT:
        return out
    out.append(("bound", port))
    six = [ip for ip in b.ips if ip.version == 6 and not ip.is_link_local]
    out += [("addr4", f"{port} . {ip}") for ip in b.ips if ip.version == 4]
    out += [("addr6", f"{port} . {ip}") for ip in six]
    ll = link_local(b.mac)
    out.append(("ll6", f"{port} . {ll}"))
    out += [("nd6", f"{port} . {int(ip):#034x}") for ip in (*six, ll)]
    return out


def render_base() -> str:
    t = TABLE
    out = [f"add table {t}"]
    out += [f"add set {t} {name} {{ {decl} }}" for name, decl in SETS.items()]
    out += [f"add set {t} {MARKER} {{ type inet_service; }}",
            f"add chain {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}",
            f"add chain {t} forward {{ type filter hook forward priority -300; policy accept; }}",
            f"add chain {t} from_pod", f"add chain {t} to_pod"]
    out += [f"flush chain {t} {c}" for c in ("prerouting", "forward", "from_pod", "to_pod")]
    out.append(f"add rule {t} prerouting iifname @ports jump from_pod")
    rules = ["iifname . ether saddr != @mac drop",
             "iifname != @bound return",
             "ether type != { ip, ip6, arp } drop",
             "arp htype != 1 drop",
             "arp ptype != ip drop",
             "iifname . arp saddr ether != @mac drop",
             "arp saddr ip 0.0.0.0 return",
             "iifname . arp saddr ip != @addr4 drop",
             "iifname . ip saddr != @addr4 drop",
             "icmp type redirect drop",
             "icmpv6 type { nd-router-advert, nd-redirect } drop",
             "ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, mld2-listener-report } return",
             "iifname . ip6 saddr != @addr6 iifname . ip6 saddr != @ll6 drop",
             "icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @nd6 drop"]
    out += [f"add rule {t} from_pod {r}" for r in rules]
    out.append(f"add rule {t} forward oifname @bound iifname @ports jump to_pod")
    rules = ["ether type arp return",
             f"icmpv6 type {{ {ND_MLD} }} return",
             "oifname . ip daddr != @addr4 drop",
             "oifname . ip6 daddr != @addr6 drop",
             "iifname . ip6 saddr != @addr6 drop"]
    out += [f"add rule {t} to_pod {r}" for r in rules]
    return "\n".join(out) + "\n"


def render_add(b: Binding) -> str:
    c = jsonio.dumps(b.tag)
    out = [f"add element {TABLE} {MARKER} {{ 0 }}"]
    out += [f"add element {TABLE} {s} {{ {k} comment {c} }}" for s, k in elements(b)]
    return "\n".join(out) + "\n"


def render_delete(b: Binding) -> str:
    """Re-add, then delete: succeeds whether or not an element is still there."""
    c = jsonio.dumps(b.tag)
    out = []
    for s, k in elements(b):
        out += [f"add element {TABLE} {s} {{ {k} comment {c} }}", f"delete element {TABLE} {s} {{ {k} }}"]
    return "\n".join(out) + "\n"


def render_delete_found(found: list[tuple[str, str]]) -> str:
    return "".join(f"delete element {TABLE} {s} {{ {k} }}\n" for s, k in found)


# ---------------------------------------------------------------- applying


def bind(b: Binding) -> None:
    """ADD: one transaction (the table and its rules first, on the node's first bound port)."""
    script = render_add(b)
    proc = nft.transaction(script, check=False)
    if proc.returncode == 0:
        return
    err = proc.stderr.decode(errors="replace")
    if "No such file" not in err:
        raise CNIError("cannot bind the pod's bridge port", f"{TABLE}: {err.strip()[:1000]}")
    proc = nft.transaction(render_base() + script, check=False)
    if proc.returncode != 0:
        raise CNIError("cannot bind the pod's bridge port",
                       f"{TABLE}: {proc.stderr.decode(errors='replace').strip()[:1000]} (the kernel needs "
                       "nf_tables with the bridge family)")


def _listing() -> list[dict] | None:
    proc = nft._run(f"list table {TABLE}", json_output=True)
    if proc.returncode != 0:
        if b"No such file" in proc.stderr:
            return None
        raise CNIError("cannot list nftables table", proc.stderr.decode(errors="replace").strip()[:2000])
    return jsonio.loads(proc.stdout).get("nftables", [])


def _key_text(value) -> str:
    """A listed key as nft takes it back: the port name quoted, the rest as listed."""
    if isinstance(value, dict) and "concat" in value:
        first, *rest = value["concat"]
        return " . ".join([jsonio.dumps(first), *(str(v) for v in rest)])
    return jsonio.dumps(value)


def tagged(listing: list[dict]) -> list[tuple[str, str, str]]:
    """(set, key, comment) of every element of our sets in a listing."""
    out = []
    for obj in listing:
        s = obj.get("set")
        if not s or s.get("name") not in SETS:
            continue
        for elem in s.get("elem") or []:
            comment = ""
            if isinstance(elem, dict) and "elem" in elem:
                comment = elem["elem"].get("comment", "")
                elem = elem["elem"]["val"]
            out.append((s["name"], _key_text(elem), comment))
    return out


def _nft_present() -> bool:
    """Whether nftables can be run here (libnftables, or `nft` in PATH): where it cannot, no port
    was ever bound, and DEL and GC have nothing to remove."""
    import os  # lazy: DEL and GC only

    return nft._library() is not None or any(os.access(os.path.join(d, "nft"), os.X_OK)
                                             for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d)


def _by_comment(prefix: str, keep=None) -> None:
    if not _nft_present():
        return
    listing = _listing()
    if listing is None:
        return
    found = [(s, k) for s, k, c in tagged(listing)
             if c.startswith(prefix) and (keep is None or c.split(" ", 1)[0] not in keep)]
    if found:
        nft.transaction(render_delete_found(found))


def delete_script(network: str, container_id: str, ifname: str, mac: str = "", ips=(),
                  level: str = STRICT) -> str:
    """The transaction text that removes the attachment's elements when they can be named (the
    pod's MAC and addresses known, from prevResult), else "" (they are found by tag). DEL may run
    it inside another nftables transaction: each transaction that deletes elements waits ~15 ms
    for the kernel, and nftables commits one at a time."""
    if not mac or not ips or not _nft_present():
        return ""
    port = names.host_veth_name(network, container_id, ifname)
    return render_delete(Binding(network, container_id, ifname, port, mac.lower(), tuple(ips), level))


def unbind_start(network: str, container_id: str, ifname: str, mac: str = "", ips=(), level: str = STRICT):
    """DEL: start removing the attachment's elements; the returned `finish()` waits for it. With
    the pod's MAC and addresses (prevResult) the elements are named; without, they are found by
    their tag."""
    prefix = Binding(network, container_id, ifname, "", "").tag.split(" ", 1)[0] + " "
    script = delete_script(network, container_id, ifname, mac, ips, level)
    if not script:
        return lambda: _by_comment(prefix)
    wait = nft.start_transaction(script, "pycni-portbind-del")

    def finish() -> None:
        status = wait()
        if status != 0:                 # no table (never bound), or the MAC changed: by tag
            _by_comment(prefix)

    return finish


def gc(network: str, valid_hashes: set[str]) -> None:
    """Remove this network's elements whose attachment is not in `valid_hashes` (full hashes)."""
    net = network_hash(network)
    keep = {f"{net}-{h[:16]}" for h in valid_hashes}
    _by_comment(net + "-", keep)


def harden_pod(netns_path: str, ifname: str) -> None:
    """The pod's interface takes no router advertisements and no redirects, and its link-local
    address is the EUI-64 one the binding expects. Before the link is up."""
    from cni.linux import netns, sysctl  # lazy: only ADD with a bound port

    with netns.entered(netns_path):
        for key, value in ((sysctl.iface_key(6, ifname, "addr_gen_mode"), "0"),
                           (sysctl.iface_key(6, ifname, "accept_ra"), "0"),
                           (sysctl.iface_key(6, ifname, "accept_redirects"), "0"),
                           (sysctl.iface_key(4, ifname, "accept_redirects"), "0"),
                           ("/proc/sys/net/ipv4/conf/all/accept_redirects", "0"),
                           (sysctl.iface_key(4, ifname, "secure_redirects"), "0")):
            sysctl.write(key, value)
    log.debug(f"port binding: {ifname} takes no RA or redirects")
