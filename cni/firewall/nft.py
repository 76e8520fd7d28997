"""nftables backend: table `inet pycni`, one nft transaction per call (through libnftables, nft's
own library, in process; through the `nft` program where the library is missing or PYCNI_NFT=exec).

The rules are fixed; what changes per pod are elements of data maps and sets, so an ADD is a few
`add element` lines whose cost does not grow with the pods on the node (no per-pod chains, no
verdict maps: either makes nft load and loop-check the whole table on every call).

    prerouting, output (nat, dstnat):  fib daddr type local jump hostports
    hostports:  mark (ct mark | M) hairpin/localhost sources for keys in @snat_*, and any source
                for keys in @masqall_*; then
                dnat ip  to ip daddr . l4proto . dport map @hostip4    (mappings with a hostIP)
                dnat ip  to l4proto . dport map @hostports4
                dnat ip6 to ... @hostip6, @hostports6
    postrouting (nat, srcnat):  ct mark & M == M masquerade
                ip saddr @masq4 ip daddr != @podnets4 ip daddr != 224.0.0.0/4 masquerade  (+ IPv6)

Every element carries the attachment's tag as comment ("<net hash>-<attachment hash> pycni
net/id/ifname"): DEL, CHECK and GC find exactly an attachment's elements by it.
Rule: render_* are pure (golden-tested); only `transaction` runs anything.
"""

from __future__ import annotations

import os

from cni.spec import jsonio
from cni.spec.errors import CNIError, TryAgainLater, UnsupportedField
from cni.spec.log import log

TYPE_CHECKING = False
if TYPE_CHECKING:       # annotations only: the policy path uses `transaction` without the port-map rules
    from cni.firewall.attachment import FirewallSpec

TABLE = "inet pycni"
NFT_TIMEOUT = 20.0      # seconds for one nft child; runtimes give a whole CNI call minutes
VERSION = 1
SETS = {   # name: declaration
    # interval sets without auto-merge: re-adding an identical range costs nothing, a merge would
    # cost a kernel commit with deletions (~14 ms) on every ADD
    "podnets4": "type ipv4_addr; flags interval;",
    "podnets6": "type ipv6_addr; flags interval;",
    "hairpin_src4": "type ipv4_addr; flags interval;",
    "hairpin_src6": "type ipv6_addr; flags interval;",
    "masq4": "type ipv4_addr;",
    "masq6": "type ipv6_addr;",
    "snat_any": "type inet_proto . inet_service;",
    "snat_ip4": "type ipv4_addr . inet_proto . inet_service;",
    "snat_ip6": "type ipv6_addr . inet_proto . inet_service;",
    "masqall_any": "type inet_proto . inet_service;",
    "masqall_ip4": "type ipv4_addr . inet_proto . inet_service;",
    "masqall_ip6": "type ipv6_addr . inet_proto . inet_service;",
}
MAPS = {
    "hostports4": "type inet_proto . inet_service : ipv4_addr . inet_service;",
    "hostports6": "type inet_proto . inet_service : ipv6_addr . inet_service;",
    "hostip4": "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service;",
    "hostip6": "type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service;",
}
SHARED = ("podnets4", "podnets6", "hairpin_src4", "hairpin_src6")   # elements shared by attachments


def marker(mark: int) -> str:
    """A set whose existence says: base rules of this version with this mark are in place."""
    return f"base_v{VERSION}_{mark:x}"


def tag(spec: FirewallSpec) -> str:
    return f"{spec.net_hash}-{spec.att_hash} {spec.tag}"[:127]


def render_base(mark: int) -> list[str]:
    t, m = TABLE, f"{mark:#x}"
    out = [f"add table {t}",
           f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
           f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
           f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
           f"add chain {t} hostports"]
    out += [f"add set {t} {name} {{ {decl} }}" for name, decl in SETS.items()]
    out += [f"add map {t} {name} {{ {decl} }}" for name, decl in MAPS.items()]
    out += [f"add set {t} {marker(mark)} {{ type inet_service; }}",
            f"add element {t} hairpin_src4 {{ 127.0.0.0/8 }}",
            f"flush chain {t} prerouting",
            f"add rule {t} prerouting fib daddr type local jump hostports",
            f"flush chain {t} output",
            f"add rule {t} output fib daddr type local jump hostports",
            f"flush chain {t} hostports"]
    mark_stmt = f"ct mark set ct mark | {m}"
    for fam, kw in ((4, "ip"), (6, "ip6")):
        out += [f"add rule {t} hostports {kw} saddr @hairpin_src{fam} meta l4proto . th dport @snat_any {mark_stmt}",
                f"add rule {t} hostports {kw} saddr @hairpin_src{fam} {kw} daddr . meta l4proto . th dport "
                f"@snat_ip{fam} {mark_stmt}",
                f"add rule {t} hostports meta nfproto ipv{fam} meta l4proto . th dport @masqall_any {mark_stmt}",
                f"add rule {t} hostports {kw} daddr . meta l4proto . th dport @masqall_ip{fam} {mark_stmt}"]
    for fam, kw in ((4, "ip"), (6, "ip6")):
        out += [f"add rule {t} hostports dnat {kw} to {kw} daddr . meta l4proto . th dport map @hostip{fam}",
                f"add rule {t} hostports meta nfproto ipv{fam} dnat {kw} to meta l4proto . th dport map "
                f"@hostports{fam}"]
    out += [f"flush chain {t} postrouting",
            f"add rule {t} postrouting ct mark & {m} == {m} masquerade",
            f"add rule {t} postrouting ip saddr @masq4 ip daddr != @podnets4 ip daddr != 224.0.0.0/4 masquerade",
            f"add rule {t} postrouting ip6 saddr @masq6 ip6 daddr != @podnets6 ip6 daddr != ff00::/8 masquerade"]
    return out


def refuse_conditions(spec: FirewallSpec) -> None:
    """Match conditions exist only on the iptables backend. Refused where rules are made (ADD,
    CHECK), never on teardown: DEL must remove whatever an older configuration left."""
    if spec.options.conditions_v4 or spec.options.conditions_v6:
        raise UnsupportedField("unsupported with the nftables backend: conditionsV4/conditionsV6",
                               "set \"backend\": \"iptables\" to use match conditions")


def elements(spec: FirewallSpec) -> list[tuple[str, str, str]]:
    """(set or map, key, data or '') of every element of the attachment; pure."""
    o = spec.options
    out: list[tuple[str, str, str]] = []
    for fam in (4, 6):
        pods = spec.ips(fam)
        if not pods:
            continue
        pod = pods[0].ip
        for m in spec.mappings:
            if not m.applies_to(fam):
                continue
            key = f"{m.protocol} . {m.host_port}"
            if m.host_ip is None:
                out.append((f"hostports{fam}", key, f"{pod} . {m.container_port}"))
                kind = "any"
            else:
                key = f"{m.host_ip} . {key}"
                out.append((f"hostip{fam}", key, f"{pod} . {m.container_port}"))
                kind = f"ip{fam}"
            if o.masq_all:
                out.append((f"masqall_{kind}", key, ""))
            elif o.snat:
                out.append((f"snat_{kind}", key, ""))
        if spec.mappings and (o.snat or o.masq_all):
            out += [(f"hairpin_src{fam}", str(a.network), "") for a in pods]
        if spec.masquerade:
            out += [(f"masq{fam}", str(a.ip), "") for a in pods]
            out += [(f"podnets{fam}", str(a.network), "") for a in pods]
    # one element per key: two mappings of one host port (same protocol and host address) in one
    # ADD would be two map elements with one key, which nft refuses as a whole (EEXIST); the first
    # mapping wins, as the first of two DNAT rules does on iptables
    first: dict[tuple[str, str], str] = {}
    for name, key, data in out:
        first.setdefault((name, key), data)
    return [(name, key, data) for (name, key), data in first.items()]


def _element(name: str, key: str, data: str, comment: str | None) -> str:
    c = f" comment {jsonio.dumps(comment)}" if comment and name not in SHARED else ""
    return f"{{ {key}{c}{' : ' + data if data else ''} }}"


def render_add(spec: FirewallSpec) -> str:
    """The fast path: elements only, behind a check that the base of this version and mark exists."""
    t, c = TABLE, tag(spec)
    out = [f"add element {t} {marker(spec.options.mark)} {{ 0 }}"]
    out += [f"add element {t} {name} {_element(name, k, d, c)}" for name, k, d in elements(spec)]
    return "\n".join(out) + "\n"


def render_delete(spec: FirewallSpec) -> str:
    """Delete the attachment's elements; a map element is first re-added with our data, so the
    transaction fails (instead of deleting) if another attachment now owns that key."""
    t, c = TABLE, tag(spec)
    out = []
    for name, k, d in elements(spec):
        if name in SHARED:
            continue      # pod networks stay: other pods of the network use them
        out += [f"add element {t} {name} {_element(name, k, d, c)}", f"delete element {t} {name} {{ {k} }}"]
    return "\n".join(out) + "\n"


def render_delete_found(found: list[tuple[str, str]]) -> str:
    return "".join(f"delete element {TABLE} {name} {{ {key} }}\n" for name, key in found)


# ---------------------------------------------------------------- running nft


class Outcome:
    """What an nft command did: its exit status and output (as the nft program would print them)."""
    __slots__ = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _nft(args: list[str], script: bytes | None = None) -> Outcome:
    """Run nft with a deadline, killed with us (a transaction must never commit after our DEL)."""
    # lazy: only when nft runs as a program (the child dies with us: cni.linux.children loads ctypes)
    import subprocess

    from cni.linux.children import tied_to_me

    try:
        p = subprocess.run(["nft", *args], input=script, capture_output=True, timeout=NFT_TIMEOUT,
                           preexec_fn=tied_to_me())
        return Outcome(p.returncode, p.stdout, p.stderr)
    except subprocess.TimeoutExpired:
        raise TryAgainLater("nft did not finish", f"nft {' '.join(args)} ran for over {NFT_TIMEOUT:g}s "
                            "and was killed") from None
    except OSError as e:
        raise CNIError("cannot run nft", str(e)) from None


class _Libnftables:
    """nft's own library (libnftables.so.1, what the `nft` program is a front-end of), through
    ctypes: the same commands, parser, messages and kernel transaction, without a process per call
    (~0.1 ms instead of ~2-5 ms). Each call has its own context, made where the call runs (the
    context's netlink socket belongs to the network namespace it was opened in). ctypes releases
    the GIL during the call, so a transaction can run in a thread beside other work. A call
    in process needs no deadline child: if we are killed mid-way the kernel never sees the end
    of the batch and commits nothing."""

    JSON = 1 << 4                       # NFT_CTX_OUTPUT_JSON, as `nft -j`

    def __init__(self, lib):
        import ctypes  # lazy: per call, only what this nft step needs

        c_ctx = ctypes.c_void_p
        for name, res, args in (("nft_ctx_new", c_ctx, [ctypes.c_uint32]), ("nft_ctx_free", None, [c_ctx]),
                                ("nft_ctx_buffer_output", ctypes.c_int, [c_ctx]),
                                ("nft_ctx_buffer_error", ctypes.c_int, [c_ctx]),
                                ("nft_ctx_get_output_buffer", ctypes.c_char_p, [c_ctx]),
                                ("nft_ctx_get_error_buffer", ctypes.c_char_p, [c_ctx]),
                                ("nft_ctx_output_set_flags", None, [c_ctx, ctypes.c_uint]),
                                ("nft_run_cmd_from_buffer", ctypes.c_int, [c_ctx, ctypes.c_char_p])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.lib = lib

    def run(self, commands: bytes, json_output: bool = False) -> Outcome:
        lib = self.lib
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise CNIError("cannot use libnftables", "nft_ctx_new failed")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            if json_output:
                lib.nft_ctx_output_set_flags(ctx, self.JSON)
            rc = lib.nft_run_cmd_from_buffer(ctx, commands)
            out = lib.nft_ctx_get_output_buffer(ctx) or b""
            err = lib.nft_ctx_get_error_buffer(ctx) or b""
        finally:
            lib.nft_ctx_free(ctx)
        return Outcome(1 if rc else 0, out, err)


_LIB: list = []


def _library() -> _Libnftables | None:
    """libnftables when the node has it (it comes with nft) and PYCNI_NFT is not "exec"."""
    if not _LIB:
        lib = None
        if os.environ.get("PYCNI_NFT", "") != "exec":
            import ctypes  # lazy: per call, only what this nft step needs

            try:
                lib = _Libnftables(ctypes.CDLL("libnftables.so.1"))
            except (OSError, AttributeError):
                lib = None              # no library (or too old): the nft program does the same
        _LIB.append(lib)
    return _LIB[0]


def _run(commands: str, json_output: bool = False) -> Outcome:
    lib = _library()
    if lib is not None:
        return lib.run(commands.encode(), json_output)
    if json_output:
        return _nft(["-j", *commands.split()])
    return _nft(["-f", "-"], commands.encode())


def start_transaction(script: str, name: str):
    """Run `script` in a thread; the returned `wait()` gives its exit status, or the exception it
    raised, once the call has returned.

    The kernel announces a batch that deletes set elements as committed (NFT_MSG_NEWGEN) ~0.5-1 ms
    into the call, then waits 5-15 ms more for the sets' RCU readers before the call returns.
    Answering DEL on the announcement was tried: the wait does not go away, the next ADD's veth
    creation waits behind it instead (6.9 ms instead of 0.7 ms right after such a DEL), and ADD is
    the call pods wait for. So DEL waits for the call."""
    import threading  # lazy: per call, only what this nft step needs

    outcome: list = []

    def work() -> None:
        try:
            outcome.append(_run(script).returncode)
        except BaseException as e:      # reported by wait(), in the caller's thread
            outcome.append(e)

    _library()                          # loaded here, not raced by two threads
    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()

    def wait():
        worker.join()
        return outcome[0] if outcome else 1

    return wait


def transaction(script: str, *, check: bool = True) -> Outcome:
    proc = _run(script)
    if check and proc.returncode != 0:
        raise CNIError("nftables transaction failed", proc.stderr.decode(errors="replace").strip()[:2000])
    return proc


def query(command: str) -> list[dict] | None:
    """The JSON listing (`nftables` array) of one list command, or None when what it names does
    not exist or nftables cannot be asked (no library, no program)."""
    try:
        proc = _run(command, json_output=True)
    except CNIError:
        return None
    if proc.returncode != 0:
        return None
    return jsonio.loads(proc.stdout).get("nftables", [])


def _listing() -> list[dict] | None:
    proc = _run(f"list table {TABLE}", json_output=True)
    if proc.returncode != 0:
        if b"No such file" in proc.stderr:
            return None
        raise CNIError("cannot list nftables table", proc.stderr.decode(errors="replace").strip()[:2000])
    return jsonio.loads(proc.stdout).get("nftables", [])


def _text(value) -> str:
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_text(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            return "-".join(_text(v) for v in value["range"])
    return str(value)


def tagged_elements(listing: list[dict]) -> list[tuple[str, str, str, str]]:
    """(set or map, key, data, comment) of every element of our sets and maps in a listing."""
    out = []
    for obj in listing:
        kind = "map" if "map" in obj else "set" if "set" in obj else None
        if kind is None or obj[kind].get("name") not in {**SETS, **MAPS}:
            continue
        for elem in obj[kind].get("elem") or []:
            key, data = (elem if isinstance(elem, list) else (elem, None))
            comment = ""
            if isinstance(key, dict) and "elem" in key:
                comment = key["elem"].get("comment", "")
                key = key["elem"]["val"]
            out.append((obj[kind]["name"], _text(key), _text(data) if data is not None else "", comment))
    return out


def setup(spec: FirewallSpec) -> None:
    refuse_conditions(spec)
    script = render_add(spec)
    proc = transaction(script, check=False)
    if proc.returncode == 0:
        return
    err = proc.stderr.decode(errors="replace")
    if "No such file" in err:           # first pod on the node, or an older base: lay the base first
        transaction("\n".join(render_base(spec.options.mark)) + "\n" + script)
        return
    if "interval overlaps" in err:      # the pod network overlaps one already listed: keep that one
        log.warning(f"nftables: pod network overlaps an existing entry, keeping it ({err.strip()[:200]})")
        script = "".join(line + "\n" for line in script.splitlines()
                         if not any(f" {name} " in line for name in SHARED))
        if transaction(script, check=False).returncode == 0:
            return
    # A host port another attachment holds (or held: its DEL never ran): the last writer wins.
    # Every element of that key changes owner together, the hairpin/localhost marks (snat_*,
    # masqall_*) with the map element, so that the former owner's DEL, which finds its elements
    # by comment, can never take the new owner's marks with it.
    log.warning(f"nftables: taking over elements held by another attachment ({err.strip()[:200]})")
    mine = {(name, key) for name, key, _ in elements(spec) if name not in SHARED}
    own = tag(spec)
    taken = [(n, k) for n, k, _, c in tagged_elements(_listing() or []) if (n, k) in mine and c != own]
    transaction(render_delete_found(taken) + script)


def teardown_start(spec: FirewallSpec):
    """Start the delete transaction; the returned function waits until it is in force and, if it
    failed (rules unknown or changed), finds the attachment's elements by their comment and deletes
    those. The transaction runs in a thread (libnftables, or the nft program with its deadline)."""
    script = render_delete(spec) if spec.pod_ips and (spec.mappings or spec.masquerade) else ""
    if not script.strip():
        return lambda: _teardown_by_comment(spec)
    wait = start_transaction(script, "pycni-nft-delete")

    def finish() -> None:
        status = wait()
        if status == 0 and spec.exhaustive:
            return
        if isinstance(status, BaseException):
            log.warning(f"nftables: delete transaction failed: {status}")
        _teardown_by_comment(spec)

    return finish


def _teardown_by_comment(spec: FirewallSpec) -> None:
    listing = _listing()
    if listing is None:
        return          # no table: nothing of ours here
    prefix = f"{spec.net_hash}-{spec.att_hash} "
    found = [(n, k) for n, k, _, c in tagged_elements(listing) if c.startswith(prefix)]
    if found:
        transaction(render_delete_found(found))


def check(spec: FirewallSpec) -> None:
    refuse_conditions(spec)
    listing = _listing()
    if listing is None:
        raise CNIError("CHECK failed: nftables table missing", TABLE)
    have = {(n, k, d) for n, k, d, _ in tagged_elements(listing)}
    missing = [f"{n} {{ {k}{' : ' + d if d else ''} }}" for n, k, d in elements(spec) if (n, k, d) not in have]
    if missing:
        raise CNIError("CHECK failed: firewall rule missing", "nftables elements " + ", ".join(missing))


def gc(network: str, valid_hashes: set[str]) -> None:
    """`valid_hashes`: full attachment hashes of the attachments to keep."""
    from cni.firewall.attachment import network_hash  # lazy: GC only (the policy path never loads it)

    listing = _listing()
    if listing is None:
        return
    net = network_hash(network) + "-"
    keep = {net + h[:16] for h in valid_hashes}
    stale = [(n, k) for n, k, _, c in tagged_elements(listing)
             if c.startswith(net) and c.split(" ", 1)[0] not in keep]
    if stale:
        log.info(f"gc: removing {len(stale)} nftables elements of network {network}")
        transaction(render_delete_found(stale))
